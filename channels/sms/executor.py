"""SMS banking: the MO handler that executes the grammar's commands on the banking core.

Each command runs through the same core-backed actions as the USSD menus
(`menus.bindings.CoreActions` / `LoanActions`, here with channel "sms"), so the rules are the
same everywhere: the PIN is checked by `core.pins.verify_pin` first (the wrong-PIN count and the
lock on the third are shared with USSD and agents), fees and limits come from the core, loans go
through the loan service with its refusal codes.

Once per stored MO, at least once (see `channels.sms.handler`):

- an MO whose sender is not a phone number the core takes (an alphanumeric id, a short
  code) is left unanswered;

- a number over `SMS_RATE_PER_MINUTE` (a fixed one-minute window in Redis) gets one notice, then
  silence, and nothing runs; a retried MO is not counted again;
- an unregistered sender gets a one-line hint to register (HELP and REG still work);
- money moves with `idempotency_key = "sms:{MO id}"` (a SEND confirmed by YES uses the SEND's MO
  id), so a re-processed or redelivered MO moves money once and answers the same;
- the reply goes out with `ref = "mo:{MO id}"`, sent once; the recipient of a transfer gets the
  core's receipt through the outbox; the sender's receipt is the reply itself (reference,
  amount, fee, new balance), so the core queues none for them (`CoreActions.sender_receipt`
  is False for SMS banking) and the sender gets one SMS;
- replies are in the customer's language (`channels.sms.texts`), the hints for malformed or
  unknown text included; an unregistered sender gets the language it chose with `LANG` (in a
  registration dialog or before any: kept on its dialog record), English otherwise;
- `REG` alone starts the registration dialog (`channels.sms.registration`); see `_dialog_reply`
  for which messages it takes while it waits;
- a temporary failure (the database or Redis not answering) sends "temporarily unavailable"
  once and raises `RetryLater`: the channel tries the MO again later and then answers it.

Nothing here logs the text; `commands.mask_secrets` is the loggable form.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.sms import commands as C
from channels.sms import registration as R
from channels.sms.dialogs import CODE_ALPHABET, CODE_LENGTH, SendConfirmations
from channels.sms.handler import InboundSms, ReplySender, RetryLater
from channels.sms.texts import error_text, text
from core import customers, transfers
from core import errors as E
from core.money import parse_amount
from core.msisdn import normalise_msisdn
from core.pg import settle
from menus.actions import ActionContext, ActionResult
from menus.bindings import CoreActions, LoanActions

log = logging.getLogger("channels.sms.executor")
# "Reply YES K7PQ2 within ...", in every language of the catalogue ("Jibu YES ...").
_CONFIRM_CODE = re.compile(rf"\b(YES )[{CODE_ALPHABET}]{{{CODE_LENGTH}}}\b")

CHANNEL = "sms"
RATE_WINDOW_S = 60
MAX_CODES_SHOWN = 5  # loan product codes named when LOAN gives an unknown one
MINI_LINES = 5  # a mini statement by SMS: the latest lines that fit in about two parts
_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # the connection died between two protocol steps
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
    TimeoutError,
    RedisError,
    E.Unavailable,
)


def _phone_number(msisdn: str, country_code: str) -> bool:
    """An E.164 number the core takes (the channel writes every phone number so)."""
    if not msisdn.startswith("+"):
        return False
    try:
        return normalise_msisdn(msisdn, country_code) == msisdn
    except E.ValidationFailed:
        return False


def stored_reply(body: str) -> str:
    """A reply as the message store keeps it: a SEND confirmation's code masked, as the YES
    that answers it is (admins read MT bodies too)."""
    return _CONFIRM_CODE.sub(r"\1" + "*" * CODE_LENGTH, body)


class RateLimiter:
    """At most `per_minute` commands per number in a window that starts with the number's first
    message and lasts a minute: one MULTI of `SET NX EX` (start the window) and `INCR`."""

    def __init__(self, redis: Redis, prefix: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_minute = per_minute

    def key(self, msisdn: str) -> str:
        return f"{self.prefix}sms:rate:{{{msisdn}}}"

    async def check(self, msisdn: str) -> str:
        """ "ok", "notice" (the first message over the limit) or "silent"."""
        key = self.key(msisdn)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=RATE_WINDOW_S, nx=True)
            pipe.incr(key)
            _, count = await pipe.execute()
        if count <= self.per_minute:
            return "ok"
        return "notice" if count == self.per_minute + 1 else "silent"


@dataclass
class Reply:
    key: str
    values: Mapping[str, Any]
    language: str | None = None  # when the command changed the language


class SmsBanking:
    """The MO handler of SMS banking (replaces the wave-1 `GrammarReplyHandler`)."""

    def __init__(
        self,
        sender: ReplySender,
        *,
        core: CoreActions,
        loans: LoanActions | None,
        limiter: RateLimiter,
        confirmations: SendConfirmations,
        registrations: R.Registrations | None = None,
        confirm_send: bool = False,
    ) -> None:
        self.sender = sender
        self.core = core
        self.loans = loans
        self.limiter = limiter
        self.confirmations = confirmations
        self.registrations = registrations  # None: no registration dialog (REG alone: a hint)
        self.confirm_send = confirm_send

    # --- the handler -------------------------------------------------------------------------

    async def handle(self, sms: InboundSms) -> None:
        if not _phone_number(sms.msisdn, self.core.country_code):
            # An alphanumeric sender id, a short code, a number in no plan we can place: no
            # customer, nobody to answer. The core's number check used to raise below, failing
            # the MO as a handler bug (with a traceback) each time.
            log.info("sms: the sender is not a phone number", extra={"mo": sms.id})
            return
        language = "en"
        try:
            if sms.attempt == 1:  # a retried MO was counted when it first came
                verdict = await self.limiter.check(sms.msisdn)
                if verdict != "ok":
                    log.info("sms: rate limited", extra={"mo": sms.id, "verdict": verdict})
                    if verdict == "notice":  # once a window: the look-up for its language
                        language = await self._language_of(sms.msisdn)
                        await self._reply(sms, text("rate_limited", language))
                    return
            customer = await customers.find_customer(
                self.core.pool, sms.msisdn, self.core.country_code
            )
            if customer is not None:
                language = customer.language
            reply = await self._reply_for(sms, customer)
        except _DOWN as exc:
            log.warning(
                "sms: temporarily unavailable", extra={"mo": sms.id, "error": type(exc).__name__}
            )
            try:
                await self.sender.send_text(
                    sms.msisdn, text("unavailable", language), ref=f"mo:{sms.id}:unavailable"
                )
            except Exception:  # the retry matters, not this notice
                log.warning("sms: could not send the unavailable notice", extra={"mo": sms.id})
            raise RetryLater(type(exc).__name__) from None
        await self._reply(sms, reply)

    async def _language_of(self, msisdn: str) -> str:
        """The customer's language; for an unregistered number the one it chose (LANG)."""
        customer = await customers.find_customer(self.core.pool, msisdn, self.core.country_code)
        if customer is not None:
            return customer.language
        return await self.registrations.language(msisdn) if self.registrations else "en"

    async def _reply(self, sms: InboundSms, body: str) -> None:
        # On the first attempt nothing can have been sent for this MO yet: skip the look-up.
        stored = stored_reply(body)
        await self.sender.send_text(
            sms.msisdn,
            body,
            ref=f"mo:{sms.id}",
            first_attempt=sms.attempt == 1,
            stored_as=None if stored == body else stored,
        )

    async def _reply_for(self, sms: InboundSms, customer: customers.Customer | None) -> str:
        command = C.parse(sms.text) if sms.complete else None
        language = customer.language if customer else "en"
        if self.registrations is not None:
            if customer is not None:
                reply = await self._registered_reply(sms, command, customer, self.registrations)
            else:
                reply, language = await self._dialog_reply(sms, command, self.registrations)
            if reply is not None:
                return reply
        if isinstance(command, C.Malformed | C.Unknown):
            return C.hint(command, language)
        key = self._without_core(command, customer)
        if key:
            return text(key, language)
        if isinstance(command, C.Register):
            return await self._run(
                functools.partial(self._register, language=language),
                sms,
                command,
                customer,
                language,
            )
        return await self._run(self._dispatch, sms, command, customer, language)

    @staticmethod
    def _without_core(command: Any, customer: customers.Customer | None) -> str:
        """The reply key of a message that needs no core call; "" when it does."""
        if command is None:
            return "incomplete"
        if isinstance(command, C.Help):
            return "help" if customer is not None else "help_unregistered"
        if isinstance(command, C.Register):
            return "already_registered" if customer is not None else ""
        if isinstance(command, C.Stop) and customer is None:
            return "nothing_to_stop"
        return "not_registered" if customer is None else ""

    # --- the registration dialog -------------------------------------------------------------

    async def _dialog_reply(
        self, sms: InboundSms, command: C.ParseResult | None, regs: R.Registrations
    ) -> tuple[str | None, str]:
        """An unregistered number: (the reply when the registration dialog takes the message,
        else None; the language of the usual answer: the one the number chose with LANG, in a
        dialog or before any, else English).

        It takes `REG` with too few words (a new dialog), LANG (the dialog's language, or with
        none waiting the number's, kept for the REG to come), and while it waits: STOP/CANCEL,
        any text that is not a command (the answer), and at a PIN
        question `<PIN>`, `PIN <PIN>` or `YES <PIN>`; while registering, every message but
        HELP, REG, STOP and LANG (the retry, or how to finish). Other commands are answered as
        usual in the dialog's language and the dialog keeps waiting; a full one-shot REG
        replaces it (and registers in its language). Each costs one read of the dialog, and
        unregistered numbers only: the hot path (a registered number's BAL, SEND) reads none."""
        if command is None or isinstance(command, C.Help):
            return None, await regs.language(sms.msisdn)
        if isinstance(command, C.Register):
            ended = await regs.end(sms.msisdn)
            return None, ended.language if ended else await regs.language(sms.msisdn)
        if C.starts_registration(sms.text):
            started, dialog = await regs.start(sms.msisdn, sms.id, sms.text.split()[1:])
            return text(started.key, dialog.language, **started.values), dialog.language
        if isinstance(command, C.Stop):
            ended = await regs.end(sms.msisdn)
            language = ended.language if ended else await regs.language(sms.msisdn)
            return (text("reg_stopped", language) if ended else None), language
        if isinstance(command, C.Language):
            asked = await regs.set_language(sms.msisdn, command.code)
            return text(asked.key, command.code, **asked.values), command.code
        return await self._dialog_answer(sms, command, regs)

    async def _dialog_answer(
        self, sms: InboundSms, command: C.ParseResult, regs: R.Registrations
    ) -> tuple[str | None, str]:
        pin_only = not isinstance(command, C.Unknown)
        step, dialog = await regs.answer(sms.msisdn, sms.text, sms.id, pin_only=pin_only)
        language = dialog.language if dialog else "en"
        if step is None or dialog is None:
            return None, language
        if step.register:
            return await self._register_dialog(sms, dialog, regs), language
        return text(step.key, language, **step.values), language

    @staticmethod
    async def _registered_reply(
        sms: InboundSms,
        command: C.ParseResult | None,
        customer: customers.Customer,
        regs: R.Registrations,
    ) -> str | None:
        """A registered number: REG alone is "already registered"; the dialog's final answer
        processed again (its registration done) gets the welcome again, another copy of it
        "already registered" (while registering, or within the dialog's TTL of the
        registration; later the usual answer). Only a PIN-shaped message costs a look-up."""
        if command is None:
            return None
        if C.starts_registration(sms.text):
            return text("already_registered", customer.language)
        if not R.is_pin_answer(sms.text):
            return None
        dialog = await regs.load(sms.msisdn)
        if dialog is None or dialog.state not in ("registering", "registered"):
            return None
        if dialog.final_mo == sms.id:
            return text("registered", dialog.language, first_name=dialog.first_name)
        copy = dialog.state == "registering" or regs.finished_lately(dialog)
        return text("already_registered", customer.language) if copy else None

    async def _register_dialog(
        self, sms: InboundSms, dialog: R.RegDialog, regs: R.Registrations
    ) -> str:
        """The dialog's answers registered by the one-shot REG's core call. The number taken
        meanwhile (another final message of this dialog won the race: a retry and the late
        original, or another channel) ends the dialog as "already registered"."""
        national_id, pin = regs.secrets(dialog)
        cmd = C.Register(dialog.first_name, dialog.last_name, national_id, pin)
        try:
            reply = await self._register(
                sms, cmd, None, language=dialog.language, key=dialog.idempotency_key()
            )
        except E.Unavailable:
            raise  # the MO is tried again later; the dialog waits in "registering" for it
        except E.CoreError as exc:
            await regs.end(sms.msisdn)
            if isinstance(exc, E.AlreadyExists) and exc.details.get("field") == "msisdn":
                return text("already_registered", dialog.language)
            return self._refusal(exc, cmd, dialog.language)
        await regs.finished(sms.msisdn, sms.id)
        return text(reply.key, dialog.language, **reply.values)

    async def _run(self, fn: Any, sms: InboundSms, command: Any, customer: Any, lang: str) -> str:
        try:
            reply: Reply = await fn(sms, command, customer)
        except E.Unavailable:
            raise
        except E.CoreError as exc:
            return self._refusal(exc, command, lang)
        return text(reply.key, reply.language or lang, **reply.values)

    def _refusal(self, exc: E.CoreError, command: Any, language: str) -> str:
        values: dict[str, Any] = {"message": exc.message, "code": exc.error_code}
        values.update(exc.details)
        if isinstance(command, C.Send):
            values.setdefault("recipient", command.phone)
        return error_text(exc.error_code, language, **values)

    # --- commands ----------------------------------------------------------------------------

    def _ctx(
        self,
        sms: InboundSms,
        action: str,
        customer: customers.Customer | None,
        *,
        key: int | str | None = None,
        language: str | None = None,
        vars: Mapping[str, Any] | None = None,
        secrets: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> ActionContext:
        return ActionContext(
            action=action,
            msisdn=sms.msisdn,
            language=language or (customer.language if customer else "en"),
            vars=dict(vars or {}),
            secrets=dict(secrets or {}),
            customer={"tier": customer.tier, "language": customer.language} if customer else {},
            params=dict(params or {}),
            idempotency_key=f"sms:{sms.id if key is None else key}",
            channel=CHANNEL,
            session_id=f"sms:{sms.id}",
            currency=self.core.currency,
            again=sms.attempt > 1,
        )

    async def _register(
        self,
        sms: InboundSms,
        cmd: C.Register,
        _customer: Any,
        *,
        language: str = "en",
        key: int | str | None = None,
    ) -> Reply:
        """One-shot REG, and the registration dialog's last step (with its language and key)."""
        result = await self.core.register(
            self._ctx(
                sms,
                "register",
                None,
                key=key,
                language=language,
                vars={"first_name": cmd.first_name, "last_name": cmd.last_name},
                secrets={"pin": cmd.pin, "national_id": cmd.national_id},
            )
        )
        return Reply("registered", result.vars)

    async def _dispatch(
        self, sms: InboundSms, cmd: C.Command, customer: customers.Customer
    ) -> Reply:
        run = {
            C.Balance: self._balance,
            C.Send: self._send,
            C.Confirm: self._confirm,
            C.Mini: self._mini,
            C.ChangePin: self._pin_change,
            C.Language: self._language,
            C.Loan: self._loan,
            C.Repay: self._repay,
            C.LoanStatus: self._loan_status,
            C.Stop: self._stop,
        }[type(cmd)]
        reply: Reply = await run(sms, cmd, customer)  # type: ignore[operator]
        return reply

    async def _stop(self, sms: InboundSms, cmd: C.Stop, customer: Any) -> Reply:
        cancelled = await self.confirmations.cancel(sms.msisdn)
        return Reply("send_stopped" if cancelled else "nothing_to_stop", {})

    async def _balance(self, sms: InboundSms, cmd: C.Balance, customer: Any) -> Reply:
        result = await self.core.balance(
            self._ctx(sms, "balance", customer, secrets={"pin": cmd.pin})
        )
        return Reply("balance", result.vars)

    async def _mini(self, sms: InboundSms, cmd: C.Mini, customer: Any) -> Reply:
        result = await self.core.statement(
            self._ctx(sms, "statement", customer, secrets={"pin": cmd.pin})
        )
        lines = list(result.vars.get("statement") or [])
        if not lines:
            return Reply("mini_empty", result.vars)
        return Reply("mini", {**result.vars, "lines": "; ".join(lines[:MINI_LINES])})

    async def _pin_change(self, sms: InboundSms, cmd: C.ChangePin, customer: Any) -> Reply:
        secrets = {"pin": cmd.old_pin, "new_pin": cmd.new_pin}
        await self.core.pin_change(self._ctx(sms, "pin.change", customer, secrets=secrets))
        return Reply("pin_changed", {})

    async def _language(self, sms: InboundSms, cmd: C.Language, customer: Any) -> Reply:
        result = await self.core.language_set(
            self._ctx(sms, "language.set", customer, params={"language": cmd.code})
        )
        return Reply("language_set", {}, language=result.language)

    async def _repay(self, sms: InboundSms, cmd: C.Repay, customer: Any) -> Reply:
        ctx = self._ctx(
            sms,
            "loans.repay",
            customer,
            vars={"amount_minor": self._amount(cmd.amount)},
            secrets={"pin": cmd.pin},
        )
        result = await self._loans().repay(ctx)
        return Reply("repaid_cleared" if result.vars["cleared"] else "repaid", result.vars)

    async def _loan_status(self, sms: InboundSms, cmd: C.LoanStatus, customer: Any) -> Reply:
        loans = self._loans()
        await self.core.verify(self._ctx(sms, "loans.status", customer, secrets={"pin": cmd.pin}))
        result = await loans.status(self._ctx(sms, "loans.status", customer))
        return Reply("loan_status" if result.vars["has_loan"] else "no_loan", result.vars)

    def _amount(self, amount: str) -> int:
        return parse_amount(amount, self.core.currency)

    def _loans(self) -> LoanActions:
        if self.loans is None:
            raise E.Unavailable("loans are not configured")
        return self.loans

    async def _loan(self, sms: InboundSms, cmd: C.Loan, customer: customers.Customer) -> Reply:
        """`LOAN <amount> <PIN>` applies for the product `LoanActions.choose` picks (the one
        in reach whose range holds the amount, the cheapest of several), or says what amounts
        may be borrowed; `LOAN <code> <amount> <PIN>` for that product (its own rules refuse
        an amount out of its range)."""
        loans = self._loans()
        amount_minor = self._amount(cmd.amount)
        offered = await loans.offered()
        if not offered:
            return Reply("no_loan_product", {})
        if cmd.product is not None:
            codes = [p.code for p in offered]
            if cmd.product not in codes:
                shown = ", ".join(codes[:MAX_CODES_SHOWN])
                return Reply("loan_product_unknown", {"code": cmd.product, "codes": shown})
            code = cmd.product
        else:
            choice = loans.choose(
                offered,
                amount_minor=amount_minor,
                tier=customer.tier,
                registered_at=customer.created_at,
            )
            if choice.product is None:
                ranges = self._ranges(choice.ranges, customer.language)
                return Reply("loan_range", {"ranges": ranges})
            code = choice.product.code
        result = await loans.apply(
            self._ctx(
                sms,
                "loans.apply",
                customer,
                vars={"amount_minor": amount_minor, "loan_product": code},
                secrets={"pin": cmd.pin},
            )
        )
        if result.vars.get("loan_status") == "review":
            return Reply("loan_review", result.vars)
        return Reply("loan_approved", result.vars)

    def _ranges(self, ranges: tuple[tuple[int, int], ...], language: str) -> str:
        """`KES 100.00 to KES 900.00 or KES 1,000.00 to KES 2,000.00`, in `language`."""
        money = self.core.money
        spans = [
            text("loan_range_span", language, low=money(lo), high=money(hi)) for lo, hi in ranges
        ]
        return f" {text('loan_range_or', language)} ".join(spans)

    async def _send(self, sms: InboundSms, cmd: C.Send, customer: customers.Customer) -> Reply:
        recipient = normalise_msisdn(cmd.phone, self.core.country_code, field="phone")
        amount_minor = self._amount(cmd.amount)
        if not self.confirm_send:
            return await self._transfer(
                sms, customer, recipient, amount_minor, key=sms.id, pin=cmd.pin
            )
        # Confirmation on: the PIN now (a wrong one counts), the quote, then "reply YES <code>".
        await self.core.verify(self._ctx(sms, "send_money", customer, secrets={"pin": cmd.pin}))
        quote = await self.core.quote(
            self._ctx(
                sms,
                "send_money.quote",
                customer,
                vars={"recipient": recipient, "amount_minor": amount_minor},
            )
        )
        code = await self.confirmations.ask(
            sms.msisdn, recipient=recipient, amount_minor=amount_minor, send_mo=sms.id
        )
        if code is None:  # a newer SEND is waiting for its YES: it stays
            return Reply("send_superseded", {})
        minutes = max(1, self.confirmations.ttl_s // 60)
        return Reply(
            "confirm_send", {**quote.vars, "recipient": recipient, "code": code, "minutes": minutes}
        )

    async def _confirm(
        self, sms: InboundSms, cmd: C.Confirm, customer: customers.Customer
    ) -> Reply:
        outcome = await self.confirmations.confirm(sms.msisdn, cmd.code, sms.id)
        if not outcome.execute or outcome.dialog is None:
            return Reply(outcome.reply_key, {})
        dialog = outcome.dialog
        return await self._transfer(
            sms, customer, dialog.recipient, dialog.amount_minor, key=dialog.send_mo, pin=None
        )

    async def _transfer(
        self,
        sms: InboundSms,
        customer: customers.Customer,
        recipient: str,
        amount_minor: int,
        *,
        key: int,
        pin: str | None,
    ) -> Reply:
        ctx = self._ctx(
            sms,
            "send_money",
            customer,
            key=key,
            vars={"recipient": recipient, "amount_minor": amount_minor},
            secrets={"pin": pin} if pin is not None else {},
        )
        if pin is None:  # confirmed by YES: the PIN was checked when the SEND came
            result = await self._send_unverified(ctx)
        else:
            result = await self.core.send_money(ctx)
        return Reply("sent", {**result.vars, "recipient": recipient})

    async def _send_unverified(self, ctx: ActionContext) -> ActionResult:
        """`CoreActions.send_money` without its PIN check (done when the SEND came)."""
        found = await customers.find_customer(
            self.core.pool, ctx.vars["recipient"], self.core.country_code
        )
        result = await settle(
            lambda: transfers.send_money(
                self.core.pool,
                sender=ctx.msisdn,
                recipient=ctx.vars["recipient"],
                amount_minor=ctx.vars["amount_minor"],
                idempotency_key=ctx.idempotency_key,
                channel=CHANNEL,
                currency=self.core.currency,
                country_code=self.core.country_code,
                sender_receipt=self.core.sender_receipt,
            ),
            what="send money",
        )
        money = self.core.money
        return ActionResult(
            vars={
                "reference": result.reference,
                "amount": money(result.amount_minor),
                "fee": money(result.fee_minor),
                "balance": money(result.balance_after_minor or 0),
                "recipient_name": f"{found.first_name} {found.last_name}" if found else "",
            }
        )
