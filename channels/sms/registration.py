"""The registration dialog: `REG` alone, then one question per SMS, on the SEND dialog's engine.

Like the SEND confirmation (`channels.sms.dialogs`), a registration is per MSISDN, plain JSON in
`menus.session.RedisSessionStore` (versioned, compare-and-set, `SMS_DIALOG_TTL_S` after the last
answer; while registering at least as long as the channel runs the final MO again; once it waits
for no answer, a day: it holds no secrets then, answers the final MO again and keeps the
number's language), driven by one shared, model-less `transitions` machine:

    * --start--> name --next--> national_id --next--> pin --next--> pin_confirm
    pin_confirm --mismatch--> pin                      the two PINs differ
    pin_confirm / pin --confirm--> registering --finish--> registered
    registering --retry--> registering                 the chosen PIN again: the new final MO
    name / national_id / pin / pin_confirm / registering --end--> ended
                                                       STOP, a third wrong answer, a refusal

`answer` is the pure step: it checks the answer to the current question with the one-shot
grammar's own checks (`commands.REGISTER_SPEC`, and `core.pins.check_pin_format` for a weak PIN),
moves the dialog on or counts a wrong answer, and names the reply. It does no I/O, so the case
table in tests/unit/test_sms_registration.py drives it directly. `Registrations` wraps it in
the store's compare-and-set loop.

After a mismatch the PIN the customer sent to confirm is kept as a candidate: a new PIN equal to
it has been sent twice and registers at once. Without that, a customer whose first PIN had the
typo would have to repeat the confirmation word for word ("YES 5930" twice), and the channel
takes an identical text within `SMS_DEDUPE_SHORT_WINDOW_S` for the SMSC's redelivery and drops
it. For the same reason the confirmation is asked as `YES <PIN>`, not the bare PIN again (a bare
PIN is accepted too, when it gets through).

The ID number and the PIN wait in the stored JSON encrypted with the gateway's field cipher (as
USSD session secrets do) and are dropped when the dialog ends. Only the MO that confirmed the
PIN (`final_mo`) registers: processed again, it registers again only if the core has not (the
number is unique there), and otherwise gets the same welcome. An older MO processed late
(`id <= last_mo`) changes nothing and gets the current question again (while registering, the
"still being opened" reply).

While `registering`, the final MO may have failed for good (the core unavailable for every
attempt, so the channel gave up on it) or may still be on its way: either way the customer
must not be stuck until the TTL. The chosen PIN sent again (`YES <PIN>`, `PIN <PIN>` or alone)
is the `retry`: that MO becomes `final_mo` and registers with the dialog's idempotency key
(`reg:{start_mo}`); the number being unique in the core, a registration that did go through
is not made twice (the number then answers as registered). Any other text gets `reg_pending`,
which says how to finish, start over (`REG`) or stop (`STOP`), and changes nothing. It asks
for `PIN <PIN>`, not the `YES <PIN>` the confirmation asked for: the same text again within
`SMS_DEDUPE_SHORT_WINDOW_S` would be dropped as a redelivery. A wrong PIN is not a wrong
answer here: the wallet does not exist yet, so there is nothing to guess.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard, TypeVar

from transitions import Machine

from channels.sms.commands import REGISTER_SPEC
from channels.sms.dialogs import DONE_KEEP_S, SAVE_TRIES, JsonDialog
from core import errors as E
from core.clock import Clock, SystemClock
from core.crypto import FieldCipher
from core.pins import check_pin_format
from menus.session import RedisSessionStore

MAX_WRONG_ANSWERS = 3  # in one dialog; the third ends it
STEPS = ("name", "national_id", "pin", "pin_confirm")
PIN_STEPS = ("pin", "pin_confirm")
# At a PIN question the PIN may come alone or after one of these words ("YES 4821").
PIN_PREFIXES = ("PIN", "YES")
PENDING = "reg_pending"  # the reply to anything but the PIN while registering
QUESTIONS = {
    "name": "reg_ask_name",
    "national_id": "reg_ask_id",
    "pin": "reg_ask_pin",
    "pin_confirm": "reg_ask_confirm",
}

_FIRST, _LAST, _NATIONAL_ID, _PIN = (pattern for pattern, _problem in REGISTER_SPEC)


@dataclass(slots=True)
class RegDialog(JsonDialog):
    """The model of the registration dialog (the stored JSON, field for field)."""

    state: str = "idle"
    language: str = "en"
    first_name: str = ""
    last_name: str = ""
    national_id: str = ""  # encrypted
    pin: str = ""  # encrypted
    candidate: str = ""  # encrypted: the PIN of a confirmation that did not match
    wrong: int = 0
    start_mo: int = 0  # the REG that started it: the registration's idempotency anchor
    last_mo: int = 0  # the newest MO applied
    final_mo: int = 0  # the MO that confirmed the PIN
    finished_at: float = 0.0  # epoch seconds: when the core registered the customer

    @property
    def active(self) -> bool:
        """A question is waiting for its answer."""
        return self.state in STEPS

    @property
    def waiting(self) -> bool:
        """The number's next message may be for this dialog (a question, or the retry)."""
        return self.active or self.state == "registering"

    def forget_secrets(self) -> None:
        self.national_id = self.pin = self.candidate = ""

    def count_wrong(self) -> None:
        self.wrong += 1

    def idempotency_key(self) -> str:
        return f"reg:{self.start_mo}"


REG_MACHINE = Machine(
    model=None,
    states=["idle", *STEPS, "registering", "registered", "ended"],
    transitions=[
        {"trigger": "start", "source": "*", "dest": "name", "before": "forget_secrets"},
        {"trigger": "next", "source": "name", "dest": "national_id"},
        {"trigger": "next", "source": "national_id", "dest": "pin"},
        {"trigger": "next", "source": "pin", "dest": "pin_confirm"},
        {"trigger": "mismatch", "source": "pin_confirm", "dest": "pin", "before": "count_wrong"},
        {"trigger": "confirm", "source": list(PIN_STEPS), "dest": "registering"},
        {"trigger": "retry", "source": "registering", "dest": "registering"},
        {
            "trigger": "finish",
            "source": "registering",
            "dest": "registered",
            "after": "forget_secrets",
        },
        {
            "trigger": "end",
            "source": [*STEPS, "registering"],
            "dest": "ended",
            "after": "forget_secrets",
        },
    ],
    initial="idle",
    auto_transitions=False,
    ignore_invalid_triggers=True,
)


def fire(event: str, dialog: RegDialog) -> bool:
    return bool(REG_MACHINE.events[event].trigger(dialog))


@dataclass(frozen=True, slots=True)
class Step:
    """What one message did: the reply `key` (with `values`), or `register` (the caller runs
    the registration and answers with its result)."""

    key: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    register: bool = False


def question(dialog: RegDialog) -> Step:
    """The current question again (while registering: how to finish)."""
    if dialog.state == "registering":
        return Step(PENDING)
    return Step(QUESTIONS.get(dialog.state, "reg_ask_name"), {"first_name": dialog.first_name})


def _wrong(dialog: RegDialog, key: str) -> Step:
    dialog.count_wrong()
    if dialog.wrong >= MAX_WRONG_ANSWERS:
        fire("end", dialog)
        return Step("reg_too_many")
    return Step(key, {"first_name": dialog.first_name})


def pin_word(text: str) -> str | None:
    """The PIN in an answer to a PIN question: `4821`, `PIN 4821` or `YES 4821`."""
    words = text.split()
    if len(words) == 2 and words[0].upper() in PIN_PREFIXES:
        return words[1]
    return words[0] if len(words) == 1 else None


def is_pin(word: str | None) -> TypeGuard[str]:
    """Four ASCII digits (the grammar's `\\d` alone would take other scripts' digits too)."""
    return word is not None and word.isascii() and bool(_PIN.fullmatch(word))


def is_pin_answer(text: str) -> bool:
    """A message shaped like an answer to a PIN question (any command word aside)."""
    return is_pin(pin_word(text))


def answer(dialog: RegDialog, text: str, cipher: FieldCipher) -> Step:
    """Apply `text` as the answer to the dialog's current question, or while registering as
    the retry (`dialog` changes)."""
    words = text.split()
    if dialog.state == "name":
        if len(words) != 2 or not (_FIRST.fullmatch(words[0]) and _LAST.fullmatch(words[1])):
            return _wrong(dialog, "reg_bad_name")
        dialog.first_name, dialog.last_name = words
    elif dialog.state == "national_id":
        if len(words) != 1 or not _NATIONAL_ID.fullmatch(words[0]):
            return _wrong(dialog, "reg_bad_id")
        dialog.national_id = cipher.encrypt(words[0].upper())
    elif dialog.state == "pin":
        return _choose(dialog, pin_word(text), cipher)
    elif dialog.state == "pin_confirm":
        return _confirm(dialog, pin_word(text), cipher)
    elif dialog.state == "registering":
        return _retry(dialog, pin_word(text), cipher)
    else:
        raise AssertionError(f"no question is asked in state {dialog.state}")
    fire("next", dialog)
    return question(dialog)


def prefill(dialog: RegDialog, given: list[str], cipher: FieldCipher) -> None:
    """`REG <first> <last> [<ID number>]`: the answers given with REG skip their questions, as
    far as they are good (a bad one is not a wrong answer: its question is simply asked)."""
    assert dialog.state == "name", dialog.state
    if len(given) < 2 or not (_FIRST.fullmatch(given[0]) and _LAST.fullmatch(given[1])):
        return
    dialog.first_name, dialog.last_name = given[0], given[1]
    fire("next", dialog)
    if len(given) == 3 and _NATIONAL_ID.fullmatch(given[2]):
        dialog.national_id = cipher.encrypt(given[2].upper())
        fire("next", dialog)


def _choose(dialog: RegDialog, pin: str | None, cipher: FieldCipher) -> Step:
    if not is_pin(pin):
        return _wrong(dialog, "reg_bad_pin")
    try:
        check_pin_format(pin)
    except E.WeakPin:
        return _wrong(dialog, "reg_weak_pin")
    dialog.pin = cipher.encrypt(pin)
    candidate, dialog.candidate = dialog.candidate, ""
    if candidate and hmac.compare_digest(cipher.decrypt(candidate), pin):
        fire("confirm", dialog)  # sent twice already: as the confirmation and now
        return Step(register=True)
    fire("next", dialog)
    return question(dialog)


def _confirm(dialog: RegDialog, pin: str | None, cipher: FieldCipher) -> Step:
    if not is_pin(pin):
        return _wrong(dialog, "reg_bad_confirm")
    if not hmac.compare_digest(cipher.decrypt(dialog.pin), pin):
        dialog.pin, dialog.candidate = "", cipher.encrypt(pin)
        fire("mismatch", dialog)
        if dialog.wrong >= MAX_WRONG_ANSWERS:
            fire("end", dialog)
            return Step("reg_too_many")
        return Step("reg_mismatch")
    fire("confirm", dialog)
    return Step(register=True)


def _retry(dialog: RegDialog, pin: str | None, cipher: FieldCipher) -> Step:
    if is_pin(pin) and hmac.compare_digest(cipher.decrypt(dialog.pin), pin):
        fire("retry", dialog)
        return Step(register=True)
    return Step(PENDING)


T = TypeVar("T")


class Registrations:
    """The registration dialogs of all numbers, in Redis with `ttl_s` after the last change."""

    def __init__(
        self,
        store: RedisSessionStore,
        cipher: FieldCipher,
        ttl_s: int,
        clock: Clock | None = None,
        *,
        registering_keep_s: float = 0.0,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.ttl_s = ttl_s
        self.clock: Clock = clock or SystemClock()
        # A dialog registering waits for its final MO's next run (the core was down): kept at
        # least as long as the channel runs an MO again (`ChannelTuning.retry_horizon_s`), and
        # a minute for the claim and the queue; with SMS_DIALOG_TTL_S alone the last runs
        # found no dialog and answered "You are not registered".
        self.registering_ttl_s = max(ttl_s, math.ceil(registering_keep_s) + 60)

    def finished_lately(self, dialog: RegDialog) -> bool:
        """Registered within the dialog's TTL: a copy of the final message (a new MO id) is
        answered "already registered"; later the dialog is kept only for the final MO itself."""
        return dialog.state == "registered" and (
            self.clock.now().timestamp() - dialog.finished_at <= self.ttl_s
        )

    def key(self, msisdn: str) -> str:
        return self.store.key("sms-reg", msisdn)

    async def load(self, msisdn: str) -> RegDialog | None:
        found = await self.store.load(self.key(msisdn))
        return None if found is None else RegDialog.from_json(found.raw)

    async def _change(
        self, msisdn: str, change: Callable[[RegDialog], tuple[T, RegDialog | None]]
    ) -> T:
        """Run `change` on the stored dialog (a fresh one when none is stored) and save the
        dialog it hands back, if any, by compare-and-set: on a conflict, again on what is
        stored now."""
        key = self.key(msisdn)
        for _ in range(SAVE_TRIES):
            found = await self.store.load(key)
            dialog = RegDialog() if found is None else RegDialog.from_json(found.raw)
            result, changed = change(dialog)
            if changed is None:
                return result
            version = None if found is None else found.version
            # A dialog that waits for no answer (no secrets left in it) is kept longer: a
            # registered one answers its final message again for as long as the channel may
            # run that MO again; an ended or idle one keeps the number's language.
            if changed.state == "registering":
                ttl_s = self.registering_ttl_s
            else:
                ttl_s = self.ttl_s if changed.waiting else DONE_KEEP_S
            saved, _ = await self.store.save(key, version, changed.to_json(), ttl_s)
            if saved:
                return result
        raise RuntimeError("the registration dialog kept changing under us")

    async def start(self, msisdn: str, mo: int, given: list[str]) -> tuple[Step, RegDialog]:
        """A new dialog (replacing any other, in its language), `given` (the words after REG)
        filled in; the REG processed again keeps its dialog."""

        def change(dialog: RegDialog) -> tuple[tuple[Step, RegDialog], RegDialog | None]:
            if dialog.start_mo == mo and dialog.active:
                return (question(dialog), dialog), None
            fresh = RegDialog(language=dialog.language, start_mo=mo, last_mo=mo)
            fire("start", fresh)
            prefill(fresh, given, self.cipher)
            return (question(fresh), fresh), fresh

        return await self._change(msisdn, change)

    async def answer(
        self, msisdn: str, text: str, mo: int, *, pin_only: bool = False
    ) -> tuple[Step | None, RegDialog | None]:
        """Apply a message to the waiting dialog: (the step, the dialog), or (None, the dialog
        stored, for its language) when the message is not for it and is answered as usual. A
        question
        takes any text, or with `pin_only` (`text` is a command) a PIN-shaped one at a PIN
        question; a dialog registering takes every message (`answer`'s retry)."""

        def change(
            dialog: RegDialog,
        ) -> tuple[tuple[Step | None, RegDialog | None], RegDialog | None]:
            if dialog.state == "registering" and dialog.final_mo == mo:
                return (Step(register=True), dialog), None  # processed again: register again
            if not dialog.waiting:
                return (None, dialog), None  # answered as usual, in the number's language
            at_pin = dialog.state in PIN_STEPS and is_pin_answer(text)
            if dialog.active and pin_only and not at_pin:
                return (None, dialog), None
            if mo <= dialog.last_mo:
                return (question(dialog), dialog), None  # an older MO, late: nothing changes
            step = answer(dialog, text, self.cipher)
            if dialog.state == "registering" and not step.register:
                return (step, dialog), None  # told how to finish; nothing changes
            dialog.last_mo = mo
            if step.register:
                dialog.final_mo = mo
            return (step, dialog), dialog

        return await self._change(msisdn, change)

    async def waiting(self, msisdn: str) -> RegDialog | None:
        """The dialog the number's next message may be for, if any (one read)."""
        dialog = await self.load(msisdn)
        return dialog if dialog is not None and dialog.waiting else None

    async def language(self, msisdn: str) -> str:
        """The language the number chose (LANG, in a dialog or before any), English else."""
        dialog = await self.load(msisdn)
        return dialog.language if dialog is not None else "en"

    async def set_language(self, msisdn: str, language: str) -> Step:
        """The language of the number's dialog (its questions and the new wallet's). Answers
        with the current question, or while registering how to finish; with no dialog
        waiting, "language_set" (the language is kept for a dialog or a one-shot REG to come,
        as HELP for a number without a wallet promises)."""

        def change(dialog: RegDialog) -> tuple[Step, RegDialog | None]:
            dialog.language = language
            return (question(dialog) if dialog.waiting else Step("language_set")), dialog

        return await self._change(msisdn, change)

    async def end(self, msisdn: str) -> RegDialog | None:
        """End the dialog waiting for an answer (STOP, a one-shot REG, a refusal); returns it,
        or None when none was waiting."""

        def change(dialog: RegDialog) -> tuple[RegDialog | None, RegDialog | None]:
            if not dialog.waiting:
                return None, None
            fire("end", dialog)
            return dialog, dialog

        return await self._change(msisdn, change)

    async def finished(self, msisdn: str, mo: int) -> None:
        """The core registered the customer for `mo`: keep only what answers it again."""

        def change(dialog: RegDialog) -> tuple[None, RegDialog | None]:
            if dialog.state != "registering" or dialog.final_mo != mo:
                return None, None
            fire("finish", dialog)
            dialog.finished_at = self.clock.now().timestamp()
            return None, dialog

        await self._change(msisdn, change)

    def secrets(self, dialog: RegDialog) -> tuple[str, str]:
        """(national id, PIN) of a dialog that is registering."""
        return self.cipher.decrypt(dialog.national_id), self.cipher.decrypt(dialog.pin)
