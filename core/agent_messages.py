"""Texts sent to agents, in the agent's language (`agents.language`: en, sw, fr).

One catalogue, like core.receipts for customers. GSM-7 letters only (tests/unit/test_gsm7_texts
walks it): French avoids ê, ç, û, ô so an SMS stays 160 characters a part. Breach alerts about
an agent are here too, though they go to the bank's staff (AGENT_ALERT_RECIPIENTS) in the
deployment's AGENT_ALERT_LANGUAGE: one catalogue of agent texts, and the same GSM-7 rule, since
AGENT_ALERT_CHANNEL may be sms.
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
    # A breach alert to staff, in parts: the sentence, the last fix, the distance to the fence.
    "breach": {
        "en": "Agent {agent} is outside its permitted zone during its working hours "
        "(breach at {when} UTC)",
        "sw": "Wakala {agent} yuko nje ya eneo lake lililoruhusiwa wakati wa saa zake za kazi "
        "(ukiukaji saa {when} UTC)",
        "fr": "L'agent {agent} est hors de sa zone autorisée pendant ses heures de travail "
        "(infraction à {when} UTC)",
    },
    "breach_fix": {
        "en": "; last fix {lat},{lon} (accuracy {accuracy})",
        "sw": "; mahali pa mwisho {lat},{lon} (usahihi {accuracy})",
        "fr": "; dernière position {lat},{lon} (précision {accuracy})",
    },
    "breach_distance": {
        "en": ", {distance} m from geofence {fence} (version {version})",
        "sw": ", mita {distance} kutoka eneo {fence} (toleo {version})",
        "fr": ", à {distance} m de la zone {fence} (version {version})",
    },
    "accuracy_unknown": {"en": "unknown", "sw": "haijulikani", "fr": "inconnue"},
    # The subject of a breach alert sent by email.
    "breach_subject": {
        "en": "Agent outside its zone",
        "sw": "Wakala nje ya eneo lake",
        "fr": "Agent hors de sa zone",
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
