"""Loan texts in the customer's language (en, sw, fr): the notices a loan sends and the reasons
it gives when it says no.

The same pattern as the core's receipts (core.receipts): a catalogue of templates by name and
language, English when a language has none, amounts given in minor units (`*_minor` params,
formatted by core.money.format_amount in the params' `currency`) and dates as dd/mm/yyyy, as
the USSD menus show them.

- `notice(template, language, params)`: the text of one loan notice. Each fits one SMS (160
  GSM-7 characters) for amounts up to KES 99,999.99; the French texts avoid letters outside
  GSM-7 (ê, ç, û ...), which would halve an SMS. Disbursement and repayment notices carry the
  ledger reference and the new balance as well, because they are the only message the
  customer gets for that movement (the core's receipt row is folded into them, see
  core.loans.core_ledger.OutboxNotifier).
- `reason(code, language, details)`: the customer's text for a loan decision or refusal code
  (the rule codes of core.loans.fraud, the decision codes of core.loans.decision, and the loan
  service's NO_OPEN_LOAN, OVERPAYMENT, PRODUCT_NOT_FOUND, DISBURSEMENT_FAILED, REJECTED).
  `details` are the error's details (`min_minor`, `limit_minor`, `wait_days` ... and
  `currency`); a template whose figures are missing falls back to a wording without them.
- `OFFICER_REASONS`: the reasons an officer picks when rejecting an application, which the
  rejection notice gives in the customer's language (`reason_code` in its params).
- `refusal_text(error, language)`: the same for a raised CoreError (a `LoanRefused`, or the
  service's NO_OPEN_LOAN / OVERPAYMENT errors): what a channel shows; an error with an unknown
  code keeps its own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from core.errors import CoreError
from core.money import format_amount

LANGUAGES = ("en", "sw", "fr")
DEFAULT_LANGUAGE = "en"
DEFAULT_CURRENCY = "KES"
SMS_CHARS = 160
MINOR_SUFFIX = "_minor"

NOTICES: dict[str, dict[str, str]] = {
    "loan_disbursed": {
        "en": "{reference} Confirmed. Loan of {amount} is in your wallet. Pay {first} by "
        "{due_date}, {total} in all. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Mkopo wa {amount} uko kwenye pochi yako. Lipa "
        "{first} kufikia {due_date}, jumla {total}. Salio {balance}.",
        "fr": "{reference} Confirmé. Crédit de {amount} versé sur votre compte. Payez {first} "
        "le {due_date}, {total} au total. Solde {balance}.",
    },
    "loan_repayment": {
        "en": "{reference} Confirmed. Loan repayment of {amount} received. Still to pay "
        "{outstanding}, next by {due_date}. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Malipo ya mkopo ya {amount} yamepokelewa. Deni "
        "{outstanding}, lipa kufikia {due_date}. Salio jipya {balance}.",
        "fr": "{reference} Confirmé. Remboursement de {amount} enregistré. Reste {outstanding}, "
        "prochaine échéance le {due_date}. Solde {balance}.",
    },
    "loan_repaid": {
        "en": "{reference} Confirmed. {amount} received. Your loan is fully repaid, thank you. "
        "New balance {balance}.",
        "sw": "{reference} Imethibitishwa. {amount} imepokelewa. Mkopo wako umelipwa wote, "
        "asante. Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} enregistré. Votre crédit est entièrement "
        "remboursé, merci. Solde {balance}.",
    },
    "loan_reminder_before": {
        "en": "Reminder: your loan payment of {amount} is due on {due_date}.",
        "sw": "Kumbusho: malipo ya mkopo wako ya {amount} yanatakiwa tarehe {due_date}.",
        "fr": "Rappel: le paiement de {amount} pour votre crédit est attendu le {due_date}.",
    },
    "loan_reminder_today": {
        "en": "Reminder: your loan payment of {amount} is due today.",
        "sw": "Kumbusho: malipo ya mkopo wako ya {amount} yanatakiwa leo.",
        "fr": "Rappel: le paiement de {amount} pour votre crédit est attendu aujourd'hui.",
    },
    "loan_reminder_late": {
        "en": "Your loan payment of {amount} was due on {due_date} ({days} days ago). "
        "Please repay to avoid penalties.",
        "sw": "Malipo ya mkopo wako ya {amount} yalitakiwa tarehe {due_date} (siku {days} "
        "zilizopita). Tafadhali lipa ili kuepuka adhabu.",
        "fr": "Le paiement de {amount} pour votre crédit était attendu le {due_date} (il y a "
        "{days} jours). Payez pour éviter des pénalités.",
    },
    "loan_penalty": {
        "en": "A late payment penalty of {amount} was added to your loan. You now owe "
        "{outstanding}.",
        "sw": "Adhabu ya kuchelewa ya {amount} imeongezwa kwenye mkopo wako. Sasa unadaiwa "
        "{outstanding}.",
        "fr": "Une pénalité de retard de {amount} a été ajoutée à votre crédit. Vous devez "
        "maintenant {outstanding}.",
    },
    "loan_rejected": {
        "en": "Your loan application was not approved. {reason}",
        "sw": "Ombi lako la mkopo halikukubaliwa. {reason}",
        "fr": "Votre demande de crédit n'a pas été acceptée. {reason}",
    },
}

_IN_REVIEW = {
    "en": "Your application will be reviewed",
    "sw": "Ombi lako litakaguliwa",
    "fr": "Votre demande sera examinée",
}
REASONS: dict[str, dict[str, str]] = {
    "TIER_NOT_ALLOWED": {
        "en": "This loan is not available for your account level",
        "sw": "Mkopo huu haupatikani kwa kiwango cha akaunti yako",
        "fr": "Ce crédit n'est pas disponible pour votre niveau de compte",
    },
    "ACCOUNT_TOO_NEW": {
        "en": "Your account is too new; try again in {wait_days} days",
        "sw": "Akaunti yako ni mpya mno; jaribu tena baada ya siku {wait_days}",
        "fr": "Votre compte est trop récent; réessayez dans {wait_days} jours",
    },
    "TOO_MANY_APPLICATIONS": {
        "en": "Too many loan applications today; try tomorrow",
        "sw": "Maombi mengi mno ya mkopo leo; jaribu kesho",
        "fr": "Trop de demandes de crédit aujourd'hui; réessayez demain",
    },
    "APPLICATION_IN_FLIGHT": {
        "en": "You already have a loan application in progress",
        "sw": "Tayari una ombi la mkopo linaloshughulikiwa",
        "fr": "Vous avez déjà une demande de crédit en cours",
    },
    "LOAN_OUTSTANDING": {
        "en": "You have a loan outstanding; repay it first",
        "sw": "Una mkopo ambao haujalipwa; ulipe kwanza",
        "fr": "Vous avez un crédit en cours; remboursez-le d'abord",
    },
    "AMOUNT_OUT_OF_RANGE": {
        "en": "Borrow between {min} and {max}",
        "sw": "Kopa kati ya {min} na {max}",
        "fr": "Empruntez entre {min} et {max}",
    },
    "LOW_SCORE": {
        "en": "You do not qualify for a loan yet",
        "sw": "Bado hustahili kupata mkopo",
        "fr": "Vous n'avez pas encore droit à un crédit",
    },
    "OVER_LIMIT": {
        "en": "Your loan limit is {limit}",
        "sw": "Kikomo chako cha mkopo ni {limit}",
        "fr": "Votre plafond de crédit est de {limit}",
    },
    "DISBURSEMENT_FAILED": {
        "en": "We could not send the money now; please try again later",
        "sw": "Hatukuweza kutuma pesa sasa; tafadhali jaribu tena baadaye",
        "fr": "Nous n'avons pas pu verser l'argent; réessayez plus tard",
    },
    "REJECTED": {
        "en": "Your application was not approved",
        "sw": "Ombi lako halikukubaliwa",
        "fr": "Votre demande n'a pas été acceptée",
    },
    "REVIEW_SCORE": _IN_REVIEW,
    "REVIEW_AMOUNT": _IN_REVIEW,
    "SCORER_UNAVAILABLE": {
        "en": "Your application will be reviewed shortly",
        "sw": "Ombi lako litakaguliwa hivi karibuni",
        "fr": "Votre demande sera examinée sous peu",
    },
    "APPROVED": {
        "en": "Your loan is approved",
        "sw": "Mkopo wako umeidhinishwa",
        "fr": "Votre crédit est accordé",
    },
    "NO_OPEN_LOAN": {
        "en": "You have no loan to repay",
        "sw": "Huna mkopo wa kulipa",
        "fr": "Vous n'avez aucun crédit à rembourser",
    },
    "OVERPAYMENT": {
        "en": "You owe {outstanding}; pay at most that",
        "sw": "Unadaiwa {outstanding}; usilipe zaidi ya hapo",
        "fr": "Vous devez {outstanding}; ne payez pas plus",
    },
    "PRODUCT_NOT_FOUND": {
        "en": "This loan product is not offered",
        "sw": "Mkopo huu haupatikani",
        "fr": "Ce crédit n'est pas proposé",
    },
}
# The reasons an officer picks when rejecting an application (`reason_code`), told to the
# customer in their language; an officer's free text cannot be translated.
OFFICER_REASONS: dict[str, dict[str, str]] = {
    "INCOMPLETE_DOCUMENTS": {
        "en": "Some documents we need are missing.",
        "sw": "Baadhi ya nyaraka tunazohitaji hazipo.",
        "fr": "Il manque des documents dont nous avons besoin.",
    },
    "INCOME_NOT_VERIFIED": {
        "en": "We could not confirm your income.",
        "sw": "Hatukuweza kuthibitisha mapato yako.",
        "fr": "Nous n'avons pas pu confirmer vos revenus.",
    },
    "TOO_MUCH_DEBT": {
        "en": "Your current debts are too high for this loan.",
        "sw": "Madeni yako ya sasa ni makubwa mno kwa mkopo huu.",
        "fr": "Vos dettes actuelles sont trop élevées pour ce crédit.",
    },
    "REPAYMENT_HISTORY": {
        "en": "Your repayment history does not allow this loan yet.",
        "sw": "Historia yako ya kulipa bado hairuhusu mkopo huu.",
        "fr": "Votre historique de remboursement ne permet pas encore ce crédit.",
    },
    "AMOUNT_TOO_HIGH": {
        "en": "Please apply for a smaller amount.",
        "sw": "Tafadhali omba kiasi kidogo zaidi.",
        "fr": "Merci de demander un montant plus petit.",
    },
    "POLICY": {
        "en": "It does not meet our lending policy.",
        "sw": "Haukidhi sera yetu ya mikopo.",
        "fr": "Elle ne respecte pas notre politique de crédit.",
    },
}
# The wording when a reason's figures are not known (a replayed decision keeps its code only).
REASONS_WITHOUT_FIGURES: dict[str, dict[str, str]] = {
    "ACCOUNT_TOO_NEW": {
        "en": "Your account is too new for this loan",
        "sw": "Akaunti yako ni mpya mno kwa mkopo huu",
        "fr": "Votre compte est trop récent pour ce crédit",
    },
    "AMOUNT_OUT_OF_RANGE": {
        "en": "This amount is not offered for this loan",
        "sw": "Kiasi hiki hakitolewi kwa mkopo huu",
        "fr": "Ce montant n'est pas proposé pour ce crédit",
    },
    "OVER_LIMIT": {
        "en": "This amount is above your loan limit",
        "sw": "Kiasi hiki kinazidi kikomo chako cha mkopo",
        "fr": "Ce montant dépasse votre plafond de crédit",
    },
    "OVERPAYMENT": {
        "en": "This is more than your loan owes",
        "sw": "Hiki ni zaidi ya deni la mkopo wako",
        "fr": "C'est plus que ce que vous devez",
    },
}


def language_of(value: str | None) -> str:
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


def _values(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as the templates show them: `x_minor` as `x` formatted in `currency`, dates as
    dd/mm/yyyy, everything else as text."""
    currency = str(params.get("currency") or DEFAULT_CURRENCY)
    values: dict[str, str] = {}
    for key, value in params.items():
        if key.endswith(MINOR_SUFFIX) and isinstance(value, int) and not isinstance(value, bool):
            values[key.removesuffix(MINOR_SUFFIX)] = format_amount(value, currency)
        elif isinstance(value, date):
            values[key] = value.strftime("%d/%m/%Y")
        elif value is not None:
            values[key] = str(value)
    return values


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:  # as core.receipts: a missing figure renders empty
        return ""


def notice(template: str, language: str, params: Mapping[str, Any]) -> str:
    """The text of one loan notice; KeyError for an unknown template. A missing figure renders
    empty rather than fail the transaction that moves the money (the tests render every
    notice the service builds with all its figures)."""
    texts = NOTICES[template]
    text = texts.get(language, texts[DEFAULT_LANGUAGE])
    values = _values(params)
    officer = OFFICER_REASONS.get(str(params.get("reason_code")))
    if officer is not None:  # an officer's reason, in the customer's language
        values["reason"] = officer.get(language, officer[DEFAULT_LANGUAGE])
    refusal = REASONS.get(str(params.get("refusal_code")))
    if refusal is not None:  # the system's refusal (a disbursement the ledger refused)
        values["reason"] = refusal.get(language, refusal[DEFAULT_LANGUAGE])
    return " ".join(text.format_map(_Blank(values)).split())


def reason(code: str, language: str, details: Mapping[str, Any] | None = None) -> str | None:
    """The customer's text for a loan decision or refusal code, or None for a code the
    catalogue does not know."""
    texts = REASONS.get(code)
    if texts is None:
        return None
    text = texts.get(language, texts[DEFAULT_LANGUAGE])
    try:
        return text.format_map(_values(details or {}))
    except KeyError:  # figures not known: the wording without them
        plain = REASONS_WITHOUT_FIGURES[code]
        return plain.get(language, plain[DEFAULT_LANGUAGE])


def refusal_text(error: CoreError, language: str) -> str:
    """What a channel shows for a loan refusal or a loan service error, in `language`."""
    return reason(error.error_code, language, error.details) or error.message
