"""SMS dialogs: what waits for a customer's next message, on the USSD menus' session engine.

A dialog is per MSISDN, plain JSON stored through `menus.session.RedisSessionStore` (a versioned
record, written by compare-and-set, with a TTL), and driven by one shared, model-less
`transitions` machine per dialog kind: each message builds a small model from the stored JSON and
fires one event on it, as the USSD engine does with its steps.

The SEND confirmation (`SMS_SEND_CONFIRM`):

    idle / awaiting / confirmed / cancelled --ask--> awaiting     a newer SEND replaces the old one
    awaiting --confirm [code matches]--> confirmed                 the money then moves once
    awaiting --cancel--> cancelled                                 third wrong code, or STOP

The transfer's idempotency key is the SEND MO's (`sms:{send_mo}`), so two YES messages, or one
YES processed twice, move the money once. The code is good for `ttl_s` from the SEND
(`expires_at`, on the dialog's clock): a wrong code saves the dialog with what is left of that,
not a new `ttl_s` (which let two wrong codes keep a transfer confirmable three times as long).
`confirmed_by` remembers which YES confirmed, so a re-processed YES gets the transfer's answer
again while any other YES gets "nothing pending".

The registration dialog (`channels.sms.registration`) runs on the same engine.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Self

from transitions import Machine

from core.clock import Clock, SystemClock
from menus.session import RedisSessionStore

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I look-alikes
CODE_LENGTH = 5
MAX_WRONG_CODES = 3
SAVE_TRIES = 5
# How long a finished dialog (a SEND confirmed, a registration done) is kept, without secrets,
# to answer its final message again: longer than the channel runs one MO again (its retries
# take about five minutes with the default tuning; raised, still far less than a day). With
# the dialog's own TTL, the last runs of a YES whose reply could not go out found nothing and
# answered "no transfer is waiting" for a transfer that had gone through.
DONE_KEEP_S = 86_400


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


class JsonDialog:
    """A dialog model stored as JSON, field for field (mixed into slotted dataclasses)."""

    __slots__ = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, raw: str) -> Self:
        data: dict[str, Any] = json.loads(raw)
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{k: data[k] for k in fields if k in data})


@dataclass(slots=True)
class SendDialog(JsonDialog):
    """The model of the SEND confirmation dialog (the stored JSON, field for field)."""

    state: str = "idle"
    code: str = ""
    recipient: str = ""
    amount_minor: int = 0
    send_mo: int = 0  # the SEND message's store id: the transfer's idempotency anchor
    confirmed_by: int = 0  # the YES message that confirmed
    wrong_codes: int = 0
    expires_at: float = 0.0  # epoch seconds: the code is good until then (0: no deadline)

    def code_matches(self, code: str) -> bool:
        return bool(self.code) and hmac.compare_digest(self.code, code.upper())


SEND_MACHINE = Machine(
    model=None,
    states=["idle", "awaiting", "confirmed", "cancelled"],
    transitions=[
        {"trigger": "ask", "source": "*", "dest": "awaiting"},
        {
            "trigger": "confirm",
            "source": "awaiting",
            "dest": "confirmed",
            "conditions": "code_matches",
        },
        {"trigger": "cancel", "source": "awaiting", "dest": "cancelled"},
    ],
    initial="idle",
    auto_transitions=False,
    ignore_invalid_triggers=True,
)


def fire(event: str, dialog: SendDialog, *args: Any) -> bool:
    return bool(SEND_MACHINE.events[event].trigger(dialog, *args))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a YES message found: `execute` the transfer in `dialog`, or answer `reply_key`."""

    dialog: SendDialog | None
    execute: bool
    reply_key: str = ""


class SendConfirmations:
    """The SEND dialogs of all numbers, in Redis with `ttl_s`."""

    def __init__(self, store: RedisSessionStore, ttl_s: int, clock: Clock | None = None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock: Clock = clock or SystemClock()

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _key(self, msisdn: str) -> str:
        return self.store.key("sms-send", msisdn)

    async def _load(self, key: str) -> tuple[int | None, SendDialog]:
        found = await self.store.load(key)
        if found is None:
            return None, SendDialog()
        return found.version, SendDialog.from_json(found.raw)

    async def ask(
        self, msisdn: str, *, recipient: str, amount_minor: int, send_mo: int
    ) -> str | None:
        """A pending SEND (replacing any older one); returns its confirmation code. A SEND
        message processed again keeps the code it was given, and its dialog as it is: confirmed
        or cancelled (STOP, three wrong codes) stays so (it used to open again, a new code).
        None: the dialog is a newer SEND's (this one processed late, a retry), which stays."""
        key = self._key(msisdn)
        for _ in range(SAVE_TRIES):
            version, dialog = await self._load(key)
            if dialog.send_mo == send_mo and dialog.state != "idle":
                return dialog.code
            if dialog.send_mo > send_mo and dialog.state != "idle":
                return None
            fire("ask", dialog)
            dialog.code = new_code()
            dialog.recipient, dialog.amount_minor, dialog.send_mo = recipient, amount_minor, send_mo
            dialog.confirmed_by, dialog.wrong_codes = 0, 0
            dialog.expires_at = self._now() + self.ttl_s
            saved, _ = await self.store.save(key, version, dialog.to_json(), self.ttl_s)
            if saved:
                return dialog.code
        raise RuntimeError("the SEND dialog kept changing under us")

    async def confirm(self, msisdn: str, code: str, yes_mo: int) -> Outcome:
        key = self._key(msisdn)
        for _ in range(SAVE_TRIES):
            version, dialog = await self._load(key)
            if dialog.state == "confirmed" and dialog.confirmed_by == yes_mo:
                return Outcome(dialog, execute=True)  # this YES, processed again
            if dialog.state != "awaiting" or version is None:
                return Outcome(None, execute=False, reply_key="no_pending")
            left = dialog.expires_at - self._now() if dialog.expires_at else self.ttl_s
            if left <= 0:
                return Outcome(None, execute=False, reply_key="no_pending")  # expired
            ttl_s = DONE_KEEP_S  # a confirmed dialog answers its YES processed again
            if fire("confirm", dialog, code):
                dialog.confirmed_by = yes_mo
                outcome = Outcome(dialog, execute=True)
            else:
                ttl_s = max(1, math.ceil(left))  # a wrong code does not extend the deadline
                dialog.wrong_codes += 1
                if dialog.wrong_codes >= MAX_WRONG_CODES:
                    fire("cancel", dialog)
                    outcome = Outcome(None, execute=False, reply_key="code_cancelled")
                else:
                    outcome = Outcome(None, execute=False, reply_key="wrong_code")
            saved, _ = await self.store.save(key, version, dialog.to_json(), ttl_s)
            if saved:
                return outcome
        raise RuntimeError("the SEND dialog kept changing under us")

    async def cancel(self, msisdn: str) -> bool:
        """STOP: the pending SEND is dropped; False when none was pending."""
        key = self._key(msisdn)
        for _ in range(SAVE_TRIES):
            version, dialog = await self._load(key)
            if dialog.state != "awaiting" or version is None:
                return False
            fire("cancel", dialog)
            saved, _ = await self.store.save(key, version, dialog.to_json(), self.ttl_s)
            if saved:
                return True
        raise RuntimeError("the SEND dialog kept changing under us")
