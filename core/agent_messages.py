"""Texts sent to agents, in the agent's language (`agents.language`: en, sw, fr).

One catalogue, like core.receipts for customers. GSM-7 letters only (tests/unit/test_gsm7_texts
walks it): French avoids ê, ç, û, ô so an SMS stays 160 characters a part. Breach alerts are not
here: they go to the bank's staff (AGENT_ALERT_RECIPIENTS), not to the agent.
"""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, dict[str, str]] = {
    # What the agent reads before handing over the cash of a customer's withdrawal.
    "cash_out_give": {
        "en": "{reference} Confirmed. Give {amount} cash to {customer} {msisdn}. "
        "Your float is credited with {amount}.",
        "sw": "{reference} Imethibitishwa. Mpe {customer} {msisdn} pesa taslimu {amount}. "
        "Float yako imeongezwa {amount}.",
        "fr": "{reference} Confirmé. Remettez {amount} en espèces à {customer} {msisdn}. "
        "Votre float est crédité de {amount}.",
    },
}
# When the customer has no name on file.
CUSTOMER_WORD = {"en": "customer", "sw": "mteja", "fr": "client"}


class _Params(dict[str, Any]):
    def __missing__(self, key: str) -> str:  # a missing field renders empty, never crashes
        return ""


def render(name: str, language: str, **params: Any) -> str:
    """The text `name` in `language` (English when the language is unknown); KeyError when
    the text is unknown."""
    texts = TEXTS[name]
    text = texts.get(language, texts["en"])
    return " ".join(text.format_map(_Params(params)).split())


def customer_word(language: str) -> str:
    return CUSTOMER_WORD.get(language, CUSTOMER_WORD["en"])
