"""Receipt texts in the customer's language (en, sw, fr), rendered from the template name and
the parameters the ledger function stored in the outbox row in the same transaction as the
money. Rendering happens at dispatch, in Python, so amounts use core.money's formatting."""

from __future__ import annotations

from typing import Any

from core.money import format_amount

TEMPLATES: dict[str, dict[str, str]] = {
    "p2p_sent": {
        "en": "{reference} Confirmed. {amount} sent to {recipient_name} {recipient}. "
        "Fee {fee}. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. {amount} imetumwa kwa {recipient_name} {recipient}. "
        "Ada {fee}. Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} envoyé à {recipient_name} {recipient}. "
        "Frais {fee}. Nouveau solde {balance}.",
    },
    "p2p_received": {
        "en": "{reference} Confirmed. You have received {amount} from {sender_name} {sender}. "
        "New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Umepokea {amount} kutoka kwa {sender_name} {sender}. "
        "Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} de {sender_name} {sender} crédité sur votre compte. "
        "Nouveau solde {balance}.",
    },
    "deposit_received": {
        "en": "{reference} Confirmed. {amount} deposited to your wallet. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. {amount} imewekwa kwenye pochi yako. "
        "Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} déposé sur votre portefeuille. "
        "Nouveau solde {balance}.",
    },
    "cash_in_received": {
        "en": "{reference} Confirmed. {amount} deposited at agent {agent_code} {agent_name}. "
        "New balance {balance}.",
        "sw": "{reference} Imethibitishwa. {amount} imewekwa kwa wakala {agent_code} "
        "{agent_name}. Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} déposé chez l'agent {agent_code} {agent_name}. "
        "Nouveau solde {balance}.",
    },
    "cash_out_done": {
        "en": "{reference} Confirmed. {amount} withdrawn at agent {agent_code} {agent_name}. "
        "Fee {fee}. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. {amount} imetolewa kwa wakala {agent_code} "
        "{agent_name}. Ada {fee}. Salio jipya {balance}.",
        "fr": "{reference} Confirmé. {amount} retiré chez l'agent {agent_code} {agent_name}. "
        "Frais {fee}. Nouveau solde {balance}.",
    },
    "float_topup": {
        "en": "{reference} Confirmed. Float of {amount} credited to agent {agent_code}.",
        "sw": "{reference} Imethibitishwa. Float ya {amount} imewekwa kwa wakala {agent_code}.",
        "fr": "{reference} Confirmé. Float de {amount} crédité à l'agent {agent_code}.",
    },
    "loan_disbursed": {
        "en": "{reference} Confirmed. Loan of {amount} credited to your wallet. "
        "New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Mkopo wa {amount} umewekwa kwenye pochi yako. "
        "Salio jipya {balance}.",
        "fr": "{reference} Confirmé. Crédit de {amount} versé sur votre portefeuille. "
        "Nouveau solde {balance}.",
    },
    "loan_repaid": {
        "en": "{reference} Confirmed. Loan repayment of {amount} received. New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Malipo ya mkopo ya {amount} yamepokelewa. "
        "Salio jipya {balance}.",
        "fr": "{reference} Confirmé. Remboursement de {amount} enregistré. "
        "Nouveau solde {balance}.",
    },
    "reversal": {
        "en": "{reference} Confirmed. Transaction {original} of {amount} was reversed. "
        "New balance {balance}.",
        "sw": "{reference} Imethibitishwa. Muamala {original} wa {amount} umerejeshwa. "
        "Salio jipya {balance}.",
        "fr": "{reference} Confirmé. La transaction {original} de {amount} a été annulée. "
        "Nouveau solde {balance}.",
    },
}


class _Params(dict[str, Any]):
    def __missing__(self, key: str) -> str:  # a missing field renders empty, never crashes
        return ""


def render(template: str, language: str, params: dict[str, Any]) -> str:
    """The text for one receipt; KeyError when the template is unknown."""
    texts = TEMPLATES[template]
    text = texts.get(language, texts["en"])
    currency = str(params.get("currency", "KES"))
    values = _Params(params)
    for name in ("amount", "fee", "balance"):
        minor = params.get(f"{name}_minor")
        if isinstance(minor, int):
            values[name] = format_amount(minor, currency)
    return " ".join(text.format_map(values).split())
