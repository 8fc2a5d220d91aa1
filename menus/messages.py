"""The engine's own texts (invalid choice, session expired, result by SMS ...), per language.

A menu document may override any of them under `messages:`; these defaults cover English,
Kiswahili and French. The validator requires every message in every language of a document, so a
menu in another language must bring its own.
"""

from __future__ import annotations

from types import MappingProxyType

DEFAULTS: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        key: MappingProxyType(texts)
        for key, texts in {
            "invalid_choice": {
                "en": "Invalid choice.",
                "sw": "Chaguo si sahihi.",
                "fr": "Choix invalide.",
            },
            "invalid_input": {
                "en": "Invalid entry, try again.",
                "sw": "Si sahihi, jaribu tena.",
                "fr": "Saisie invalide, réessayez.",
            },
            "invalid_pin": {
                "en": "The PIN is 4 digits.",
                "sw": "PIN ni tarakimu 4.",
                "fr": "Le PIN a 4 chiffres.",
            },
            "mismatch": {
                "en": "The PINs differ, try again.",
                "sw": "PIN hazilingani, jaribu tena.",
                "fr": "Les PIN different, réessayez.",
            },
            "more": {"en": "98. More", "sw": "98. Zaidi", "fr": "98. Suite"},
            "back": {"en": "0. Back", "sw": "0. Rudi", "fr": "0. Retour"},
            "confirm": {"en": "1. Confirm", "sw": "1. Thibitisha", "fr": "1. Confirmer"},
            "cancel": {"en": "2. Cancel", "sw": "2. Ghairi", "fr": "2. Annuler"},
            "unavailable": {
                "en": "The service is temporarily unavailable. Please try again later.",
                "sw": "Huduma haipatikani kwa sasa. Tafadhali jaribu tena baadaye.",
                "fr": "Le service est temporairement indisponible. Réessayez plus tard.",
            },
            "expired": {
                "en": "Your session has expired. Please dial again.",
                "sw": "Muda wa kikao umeisha. Tafadhali piga tena.",
                "fr": "Votre session a expiré. Veuillez composer à nouveau.",
            },
            "busy": {
                "en": "Your previous request is still being processed. Please wait.",
                "sw": "Ombi lako la awali bado linashughulikiwa. Tafadhali subiri.",
                "fr": "Votre demande précédente est en cours. Veuillez patienter.",
            },
            "pending": {
                "en": "We are still processing your request. The result will come by SMS.",
                "sw": "Bado tunashughulikia ombi lako. Utapokea jibu kwa SMS.",
                "fr": "Votre demande est en cours. Le résultat vous sera envoyé par SMS.",
            },
            "error": {
                "en": "Sorry, we could not complete your request. Please try again later.",
                "sw": "Samahani, ombi lako halikukamilika. Tafadhali jaribu tena baadaye.",
                "fr": "Désolé, votre demande n'a pas abouti. Réessayez plus tard.",
            },
        }.items()
    }
)

KEYS = tuple(DEFAULTS)

# The SMS that keeps the promise "the result will come by SMS" when a movement whose outcome was
# lost is abandoned (menus.pending): nothing moved, and nothing will under that request; for a
# read whose owner is gone, or a registration or PIN change abandoned, nothing changed. Not a
# menu message (a menu cannot override it): it is sent where no menu is loaded, and no stored
# menu in another language fails validation for a key it never had.
NOT_DONE: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        action: MappingProxyType(texts)
        for action, texts in {
            "send_money": {
                "en": "Your transfer did not go through and no money was taken from your "
                "account. You may send it again.",
                "sw": "Utumaji wako haukufanikiwa na hakuna pesa iliyotolewa kwenye akaunti "
                "yako. Unaweza kutuma tena.",
                "fr": "Votre transfert n'a pas abouti et aucun montant n'a été prélevé sur "
                "votre compte. Vous pouvez le refaire.",
            },
            "withdraw": {
                "en": "Your withdrawal did not go through and no money was taken from your "
                "account. Do not take cash for it; you may try again.",
                "sw": "Utoaji wako haukufanikiwa na hakuna pesa iliyotolewa kwenye akaunti "
                "yako. Usipokee pesa taslimu kwa ajili yake; unaweza kujaribu tena.",
                "fr": "Votre retrait n'a pas abouti et aucun montant n'a été prélevé sur votre "
                "compte. Ne prenez pas d'espèces pour ce retrait; vous pouvez réessayer.",
            },
            "loans.apply": {
                "en": "Your loan application did not go through: no loan was given and nothing "
                "was taken from your account. You may apply again.",
                "sw": "Ombi lako la mkopo halikufanikiwa: hakuna mkopo uliotolewa wala pesa "
                "iliyochukuliwa kwenye akaunti yako. Unaweza kuomba tena.",
                "fr": "Votre demande de crédit n'a pas abouti: aucun crédit n'a été versé et "
                "rien n'a été prélevé sur votre compte. Vous pouvez la refaire.",
            },
            "loans.repay": {
                "en": "Your loan repayment did not go through and no money was taken from your "
                "account. Your loan is unchanged; you may repay again.",
                "sw": "Malipo yako ya mkopo hayakufanikiwa na hakuna pesa iliyotolewa kwenye "
                "akaunti yako. Deni lako halijabadilika; unaweza kulipa tena.",
                "fr": "Votre remboursement n'a pas abouti et aucun montant n'a été prélevé sur "
                "votre compte. Votre crédit est inchangé; vous pouvez rembourser à nouveau.",
            },
            # A read the sweeper cannot do again (it holds no PIN): nothing was changed.
            "balance": {
                "en": "Your balance request could not be completed. Nothing was changed on "
                "your account. Please try again.",
                "sw": "Ombi lako la salio halikukamilika. Hakuna kilichobadilishwa kwenye "
                "akaunti yako. Tafadhali jaribu tena.",
                "fr": "Votre demande de solde n'a pas abouti. Rien n'a été modifié sur votre "
                "compte. Veuillez réessayer.",
            },
            "statement": {
                "en": "Your statement request could not be completed. Nothing was changed on "
                "your account. Please try again.",
                "sw": "Ombi lako la taarifa halikukamilika. Hakuna kilichobadilishwa kwenye "
                "akaunti yako. Tafadhali jaribu tena.",
                "fr": "Votre demande de relevé n'a pas abouti. Rien n'a été modifié sur votre "
                "compte. Veuillez réessayer.",
            },
            # A change abandoned under its key (core.customers.abandon_request).
            "register": {
                "en": "Your registration did not go through and nothing was changed. You may "
                "register again.",
                "sw": "Usajili wako haukufanikiwa na hakuna kilichobadilishwa. Unaweza "
                "kujisajili tena.",
                "fr": "Votre inscription n'a pas abouti et rien n'a été modifié. Vous pouvez "
                "vous inscrire à nouveau.",
            },
            "pin.change": {
                "en": "Your PIN change did not go through and nothing was changed: your PIN "
                "is the same. You may change it again.",
                "sw": "Kubadilisha PIN yako hakukufanikiwa na hakuna kilichobadilishwa: PIN "
                "yako ni ile ile. Unaweza kuibadilisha tena.",
                "fr": "Le changement de votre PIN n'a pas abouti et rien n'a été modifié: "
                "votre PIN est inchangé. Vous pouvez réessayer.",
            },
        }.items()
    }
)
# The SMS that keeps the promise when a registration or a PIN change promised "by SMS" was
# done under its key after all, and its owner could not say so (menus.pending): the result,
# as the menu's own end screen says it (without the name: one GSM-7 SMS whatever it is).
DONE: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        action: MappingProxyType(texts)
        for action, texts in {
            "register": {
                "en": "You are registered. Dial again to use your wallet.",
                "sw": "Umesajiliwa. Piga tena kutumia pochi yako.",
                "fr": "Inscription réussie. Composez à nouveau pour commencer.",
            },
            "pin.change": {
                "en": "Your PIN has been changed.",
                "sw": "PIN yako imebadilishwa.",
                "fr": "Votre PIN a été changé.",
            },
        }.items()
    }
)
FALLBACK_LANGUAGE = "en"


def not_done_text(action: str, language: str) -> str:
    """The abandoned movement's SMS in the customer's language (English when not catalogued)."""
    texts = NOT_DONE[action]
    return texts.get(language) or texts[FALLBACK_LANGUAGE]


def done_text(action: str, language: str) -> str:
    """A registration's or a PIN change's result, found done under its key, in the
    customer's language (English when not catalogued)."""
    texts = DONE[action]
    return texts.get(language) or texts[FALLBACK_LANGUAGE]


def default_text(key: str, language: str) -> str:
    texts = DEFAULTS[key]
    return texts.get(language) or texts[FALLBACK_LANGUAGE]
