"""Where menu actions meet the banking core: `bind(bindings, ...)` puts one implementation per
catalogued action (`menus.catalogue`) and the late-result notifier into `MenuBindings`.

Each implementation is a small adapter: read `ctx.vars` / `ctx.secrets`, call the core with
`ctx.idempotency_key` for money, return an `ActionResult` whose `vars` carry the outputs the
catalogue lists (display strings such as "KES 1,234.00"), and let the core's typed errors
propagate: their `error_code` picks the menu's error screen (`WRONG_PIN` with
`attempts_left`, `WALLET_LOCKED`, `INSUFFICIENT_FUNDS`, `LIMIT_EXCEEDED` ...). A database that
does not answer becomes `Unavailable`, which the engine shows as "temporarily unavailable";
a money movement whose connection stays lost past `core.pg.settle` becomes `Unsettled`, which
the engine answers "result by SMS" and settles in the background. `ActionResult.receipted`
says the core queued the caller's own receipt of a movement, so that no result SMS repeats it.

PINs are checked by `core.pins.verify_pin` before anything else an action does, so the count of
wrong PINs (and the lock on the third) is the one every channel shares.

Withdrawal at an agent, started by the customer. The core's `cash_out` is the agent's operation
(customer wallet -> agent float, the fee and the agent's commission). On USSD the customer
starts it, as with mobile money elsewhere: they type the agent's number and the amount and
authorise with their own PIN; the money moves at once and the agent is told by SMS (written to
the outbox in the same transaction as the money), and hands over the cash on seeing it. The
transfer's note records that the customer initiated and authorised it, so disputes can tell it
from an agent-initiated cash-out. The agent's PIN is not asked: the agent is not on the call.
The agent's location still is: an agent with fences must have a fresh device fix inside one
(`withdrawal_gate`, core.agent_transactions.gate_customer_withdrawal, AGENT_WITHDRAWAL_GATE),
so a phone at home cannot pay out "at the counter"; the gate's evidence joins the note.

A registration or a PIN change promised "result by SMS" is kept under the step's key too,
where the core makes the change (core.customers.abandon_request), and a balance or statement
promised so is answered "could not be completed" once its owner is gone (`PromiseSettler`).

Loans go through the loan service (`menus.loans.service.LoanService`, `app[LOANS]`), which
moves the money on the core's ledger. Its refusals (`LoanRefused`, one code per rule) reach the
menu as `LOAN_OUTSTANDING` (an open loan) or `NOT_ELIGIBLE` with the rule's screen-sized
`reason` in the caller's language; the PIN is checked first, as everywhere. A loan application
or repayment promised "result by SMS" is kept as a transfer is (`PromiseSettler`), under the
step's request key where the loan service claims it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

import asyncpg

from core import agent_messages, customers, fees, limits, outbox, pins, transfers
from core import errors as E
from core.agents import Agent, get_agent
from core.crypto import FieldCipher
from core.loans import store as loan_store
from core.loans.choice import Choice, choose_product
from core.loans.messages import refusal_text
from core.loans.products import Product
from core.money import format_amount
from core.pg import CALL_TIMEOUT_S, CONNECTION_LOST, settle
from core.transfers import StatementLine
from menus.actions import ActionContext, ActionFn, ActionResult, MenuBindings
from menus.loans.service import LoanService, late_result_text
from menus.messages import NOT_DONE, done_text, not_done_text
from menus.pending import Pending

log = logging.getLogger("menus.bindings")

CHANNEL = "ussd"
STATEMENT_LINES = 10  # lines per statement call; 98 pages through them, then fetches older
OUTBOX_CHANNEL = "sms"
LATE_RESULT_MAX_CHARS = 4000  # the outbox's body limit
# PostgreSQL not answering now (asking again later may): a lost connection (core.pg's list,
# a server shutting down included), a statement cancelled by the server, a standby refusing
# writes during a failover.
_DOWN = (
    *CONNECTION_LOST,
    asyncpg.QueryCanceledError,
    asyncpg.ReadOnlySQLTransactionError,
)

# One statement line: "05/01 Sent KES 505.00 to +254712345678". Amounts out include the fee.
_LINES: dict[str, dict[str, str]] = {
    "en": {
        "p2p-": "Sent {amount} to {party}",
        "p2p+": "Received {amount} from {party}",
        "deposit+": "Deposit {amount}",
        "cash_in+": "Deposit {amount} at {party}",
        "cash_out-": "Withdrawn {amount} at {party}",
        "loan_disbursement+": "Loan {amount}",
        "loan_repayment-": "Loan repaid {amount}",
        "reversal": "Reversal {amount}",
        "other": "{amount}",
    },
    "sw": {
        "p2p-": "Umetuma {amount} kwa {party}",
        "p2p+": "Umepokea {amount} kutoka {party}",
        "deposit+": "Amana {amount}",
        "cash_in+": "Amana {amount} kwa {party}",
        "cash_out-": "Umetoa {amount} kwa {party}",
        "loan_disbursement+": "Mkopo {amount}",
        "loan_repayment-": "Malipo ya mkopo {amount}",
        "reversal": "Urejeshaji {amount}",
        "other": "{amount}",
    },
    "fr": {
        "p2p-": "Envoyé {amount} à {party}",
        "p2p+": "Virement {amount} de {party}",
        "deposit+": "Versement {amount}",
        "cash_in+": "Versement {amount} chez {party}",
        "cash_out-": "Retrait {amount} chez {party}",
        "loan_disbursement+": "Crédit {amount}",
        "loan_repayment-": "Remboursement {amount}",
        "reversal": "Annulation {amount}",
        "other": "{amount}",
    },
}


def statement_line(line: StatementLine, language: str, currency: str) -> str:
    texts = _LINES.get(language, _LINES["en"])
    sign = "-" if line.amount_minor < 0 else "+"
    text = texts.get(f"{line.kind}{sign}") or texts.get(line.kind) or texts["other"]
    amount = format_amount(abs(line.amount_minor), currency)
    day = line.created_at.strftime("%d/%m")
    return f"{day} " + text.format(amount=amount, party=line.counterparty)


def customer_context(customer: customers.Customer) -> dict[str, Any]:
    """What the menus know about the caller (routers read it; `first_name` is shown)."""
    return {
        "registered": True,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "language": customer.language,
        "status": customer.status,
        "tier": customer.tier,
    }


def day(value: date) -> str:
    return value.strftime("%d/%m/%Y")


def _loan_refusal(exc: E.LoanRefused, language: str) -> E.CoreError:
    """A loan rule's refusal as the menu knows it (see the module docstring); the reason in
    the caller's language (core.loans.messages)."""
    if exc.error_code == "LOAN_OUTSTANDING":
        return E.CoreError(exc.message, code="LOAN_OUTSTANDING")
    reason = refusal_text(exc, language)
    return E.CoreError(exc.message, code="NOT_ELIGIBLE", reason=reason, rule=exc.error_code)


def _guard(fn: ActionFn) -> ActionFn:
    """A database that does not answer is a temporary failure, not a bug."""

    @functools.wraps(fn)
    async def guarded(ctx: ActionContext) -> ActionResult:
        try:
            return await fn(ctx)
        except _DOWN as exc:
            raise E.Unavailable(reason=type(exc).__name__) from None

    return guarded


def _amount(ctx: ActionContext) -> int:
    value = ctx.vars.get("amount_minor")
    if isinstance(value, bool) or not isinstance(value, int):
        raise E.ValidationFailed("No amount was entered", field="amount_minor")
    return value


def _var(ctx: ActionContext, name: str) -> str:
    value = ctx.vars.get(name)
    if not isinstance(value, str) or not value:
        raise E.ValidationFailed(f"No {name} was entered", field=name)
    return value


def _secret(ctx: ActionContext, name: str = "pin") -> str:
    value = ctx.secrets.get(name)
    if value is None:
        raise E.ValidationFailed(f"No {name} was entered", field=name)
    return value


# (agent code, customer MSISDN, the step's idempotency key) -> the gate's evidence for a
# customer-initiated withdrawal there (raises a LocationRefused when the agent's location does
# not allow it; the refusal is recorded against the agent).
WithdrawalGate = Callable[[str, str, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class CoreActions:
    """The core-backed actions. `pool` is the asyncpg pool every call runs on."""

    pool: Any  # asyncpg.Pool
    cipher: FieldCipher
    currency: str
    country_code: str
    pin_rounds: int
    # The agent's geofence gate for customer-initiated withdrawals (gateway.ussd wires it to
    # core.agent_transactions.gate_customer_withdrawal): the evidence to store, or a refusal.
    withdrawal_gate: WithdrawalGate | None = None
    channel: str = CHANNEL  # what transfers and audit rows record ("sms" for SMS banking)
    # Whether the core queues the sender's receipt SMS of a transfer. SMS banking says no: its
    # reply to SEND is the sender's receipt. On USSD the screen is not one, so the SMS follows.
    sender_receipt: bool = True

    def money(self, minor: int) -> str:
        return format_amount(minor, self.currency)

    async def lookup(self, ctx: ActionContext) -> ActionResult:
        found = await customers.find_customer(self.pool, ctx.msisdn, self.country_code)
        if found is None:
            return ActionResult(customer={"registered": False})
        return ActionResult(customer=customer_context(found))

    async def register(self, ctx: ActionContext) -> ActionResult:
        try:
            customer = await self._register(ctx)
        except E.AlreadyExists:
            # A USSD step run again under its key (asked again after a late answer lost that
            # had committed, or taken over from a dead claim): the customer it registered is
            # its answer. SMS answers a dialog's final message processed again from the dialog
            # (channels.sms.executor), and its key names the dialog, not one message: a second
            # message must stay "already registered".
            if self.channel != CHANNEL:
                raise
            found = await customers.registered_under(
                self.pool, ctx.msisdn, ctx.idempotency_key, self.country_code
            )
            if found is None:
                raise
            customer = found
        return ActionResult(
            vars={"first_name": customer.first_name}, customer=customer_context(customer)
        )

    async def _register(self, ctx: ActionContext) -> customers.Customer:
        return await customers.register_customer(
            self.pool,
            self.cipher,
            msisdn=ctx.msisdn,
            first_name=_var(ctx, "first_name"),
            last_name=_var(ctx, "last_name"),
            national_id=_secret(ctx, "national_id"),
            pin=_secret(ctx),
            language=ctx.language,
            channel=self.channel,
            pin_rounds=self.pin_rounds,
            currency=self.currency,
            country_code=self.country_code,
            # Remembered with the customer; a request given up (a late result abandoned,
            # PromiseSettler) registers nothing.
            idempotency_key=ctx.idempotency_key,
        )

    async def verify(self, ctx: ActionContext, name: str = "pin") -> None:
        await pins.verify_pin(
            self.pool,
            ctx.msisdn,
            _secret(ctx, name),
            self.country_code,
            # A request run again (its answer lost) counts its wrong PIN once.
            request_key=ctx.idempotency_key,
        )

    async def verify_to_move(self, ctx: ActionContext) -> None:
        """The PIN before money moves, unless this request, handled again (`ctx.again`),
        already moved this customer's money under its key: then the ledger replays it (and
        checks it is the same request) with no second PIN check. A PIN changed, or an
        account locked, since the first attempt must not turn a transfer that went through
        into "wrong PIN", count a failure, and leave the customer without its receipt."""
        if ctx.again:
            earlier = await transfers.posted_under(self.pool, ctx.idempotency_key)
            if earlier is not None and earlier.debit_party == ctx.msisdn:
                return
        await self.verify(ctx)

    async def balance(self, ctx: ActionContext) -> ActionResult:
        await self.verify(ctx)
        minor = await transfers.balance(self.pool, ctx.msisdn, self.currency, self.country_code)
        return ActionResult(vars={"balance": self.money(minor)})

    async def quote(self, ctx: ActionContext) -> ActionResult:
        """Who the recipient is and what it costs, checked before the PIN is asked (the ledger
        checks everything again, under its locks, when the money moves)."""
        recipient = _var(ctx, "recipient")
        amount = _amount(ctx)
        if recipient == ctx.msisdn:
            raise E.SameAccount("You cannot send money to yourself", msisdn=recipient)
        tier = str(ctx.customer.get("tier") or "Basic")
        # Four independent reads at once: the caller waits one round trip, not four.
        found, cap, price, have = await asyncio.gather(
            customers.find_customer(self.pool, recipient, self.country_code),
            limits.get_limits(self.pool, tier, self.currency),
            fees.quote(self.pool, "p2p", amount, self.currency),
            transfers.balance(self.pool, ctx.msisdn, self.currency, self.country_code),
        )
        if found is None:
            raise E.CustomerNotFound(msisdn=recipient)
        if amount > cap.per_transaction_minor:
            raise E.LimitExceeded(limit="per_transaction")
        if have < price.total_minor:
            raise E.InsufficientFunds()
        return ActionResult(
            vars={
                "amount": self.money(amount),
                "fee": self.money(price.fee_minor),
                "total": self.money(price.total_minor),
                "recipient_name": f"{found.first_name} {found.last_name}",
            }
        )

    async def send_money(self, ctx: ActionContext) -> ActionResult:
        await self.verify_to_move(ctx)
        recipient = _var(ctx, "recipient")
        amount = _amount(ctx)
        result = await settle(
            lambda: transfers.send_money(
                self.pool,
                sender=ctx.msisdn,
                recipient=recipient,
                amount_minor=amount,
                idempotency_key=ctx.idempotency_key,
                channel=self.channel,
                currency=self.currency,
                country_code=self.country_code,
                sender_receipt=self.sender_receipt,
            ),
            what="send money",
        )
        name = ctx.vars.get("recipient_name")
        if not isinstance(name, str) or not name:
            found = await customers.find_customer(self.pool, recipient, self.country_code)
            name = f"{found.first_name} {found.last_name}" if found else recipient
        return ActionResult(
            vars={
                "reference": result.reference,
                "amount": self.money(result.amount_minor),
                "fee": self.money(result.fee_minor),
                "balance": self.money(result.balance_after_minor or 0),
                "recipient_name": name,
            },
            receipted=self.sender_receipt,
        )

    async def statement(self, ctx: ActionContext) -> ActionResult:
        """The latest STATEMENT_LINES lines, or with the param `older` the ones before the
        oldest shown (`statement_before`, from the core's paged statement). One line more is
        read to know whether older ones exist (`statement_more`). The PIN is verified again
        for every page, as for every other call that reads the account."""
        older = bool(ctx.params.get("older"))
        before = ctx.vars.get("statement_before") if older else None
        if older and (isinstance(before, bool) or not isinstance(before, int)):
            raise E.ValidationFailed("No statement page to go on from", field="statement_before")
        await self.verify(ctx)
        lines = await transfers.statement(
            self.pool,
            ctx.msisdn,
            limit=STATEMENT_LINES + 1,
            before=before,
            currency=self.currency,
            country_code=self.country_code,
        )
        shown = lines[:STATEMENT_LINES]
        out: dict[str, Any] = {
            "statement": [statement_line(x, ctx.language, self.currency) for x in shown],
            "statement_before": shown[-1].entry_id if shown else None,
            "statement_more": len(lines) > STATEMENT_LINES,
        }
        if not older:
            # The newest line's balance is the wallet's balance (the ledger check holds it so);
            # a wallet with no lines has never held money. Older pages keep the one shown.
            out["balance"] = self.money(lines[0].balance_after_minor if lines else 0)
        return ActionResult(vars=out)

    async def withdraw(self, ctx: ActionContext) -> ActionResult:
        """Customer-initiated cash-out at an agent (see the module docstring)."""
        await self.verify_to_move(ctx)
        agent = await get_agent(self.pool, _var(ctx, "agent"))
        amount = _amount(ctx)
        try:
            evidence = await self._withdrawal_evidence(ctx, agent)
        except (E.AgentUnavailable, E.LocationRefused):
            result = await self._withdrawn_before(ctx, agent, amount)
            if result is None:
                raise
        else:
            result = await settle(
                lambda: self._pay_out(ctx, agent, amount, evidence), what="withdrawal"
            )
        return ActionResult(
            vars={
                "reference": result.reference,
                "amount": self.money(result.amount_minor),
                "fee": self.money(result.fee_minor),
                "balance": self.money(result.balance_after_minor or 0),
                "agent_name": agent.name,
            },
            receipted=True,  # the ledger's cash_out_done receipt
        )

    async def _withdrawal_evidence(self, ctx: ActionContext, agent: Agent) -> dict[str, Any]:
        """What the transfer's note records; a refusal when the agent may not pay out now."""
        if agent.status != "active":
            raise E.AgentUnavailable(agent_code=agent.code)
        evidence: dict[str, Any] = {"initiated_by": "customer", "authorised_by": "customer_pin"}
        if self.withdrawal_gate is not None:
            evidence |= await self.withdrawal_gate(agent.code, ctx.msisdn, ctx.idempotency_key)
        return evidence

    async def _withdrawn_before(
        self, ctx: ActionContext, agent: Agent, amount: int
    ) -> transfers.TransferResult | None:
        """This very withdrawal, when the step already paid it out (the step again after its
        COMMIT's answer was lost): the money moved under the agent's state then, and the
        customer must hear so, not "nothing was withdrawn" because the agent has since left
        its zone or been suspended. Asked only on a refusal: no read on the usual path."""
        earlier = await transfers.posted_under(self.pool, ctx.idempotency_key)
        if earlier is None or (earlier.kind, earlier.debit_party, earlier.credit_party) != (
            "cash_out",
            ctx.msisdn,
            agent.code,
        ):
            return None
        return earlier if earlier.amount_minor == amount else None

    async def _pay_out(
        self, ctx: ActionContext, agent: Agent, amount: int, evidence: dict[str, Any]
    ) -> transfers.TransferResult:
        """The cash-out and, in its transaction, the agent's SMS to hand over the cash."""
        async with self.pool.acquire(timeout=CALL_TIMEOUT_S) as conn, conn.transaction():
            result = await transfers.cash_out(
                conn,
                agent_code=agent.code,
                msisdn=ctx.msisdn,
                amount_minor=amount,
                idempotency_key=ctx.idempotency_key,
                channel=self.channel,
                evidence=evidence,
                currency=self.currency,
                country_code=self.country_code,
            )
            if not result.replayed:
                name = " ".join(
                    str(ctx.customer.get(k) or "") for k in ("first_name", "last_name")
                ).strip()
                await outbox.enqueue(
                    conn,
                    channel=OUTBOX_CHANNEL,
                    recipient=agent.msisdn,
                    body=agent_messages.render(
                        "cash_out_give",
                        agent.language,
                        reference=result.reference,
                        amount=self.money(amount),
                        customer=name or agent_messages.customer_word(agent.language),
                        msisdn=ctx.msisdn,
                    ),
                    kind="agent_cash_out",
                )
        return result

    async def pin_change(self, ctx: ActionContext) -> ActionResult:
        await pins.change_pin(
            self.pool,
            ctx.msisdn,
            _secret(ctx),
            _secret(ctx, "new_pin"),
            self.pin_rounds,
            self.country_code,
            # The same request processed again answers the same, counting no wrong PIN.
            idempotency_key=ctx.idempotency_key,
        )
        return ActionResult()

    async def language_set(self, ctx: ActionContext) -> ActionResult:
        language = str(ctx.params.get("language", ""))
        await customers.set_language(self.pool, ctx.msisdn, language, self.country_code)
        return ActionResult(
            vars={"language": language},
            customer={**ctx.customer, "language": language},
            language=language,
        )

    def functions(self) -> dict[str, ActionFn]:
        return {
            "customer.lookup": self.lookup,
            "register": self.register,
            "balance": self.balance,
            "send_money.quote": self.quote,
            "send_money": self.send_money,
            "statement": self.statement,
            "withdraw": self.withdraw,
            "pin.change": self.pin_change,
            "language.set": self.language_set,
        }


@dataclass(frozen=True, slots=True)
class LoanActions:
    """The loan actions, on the loan service; PINs through `core`'s shared counter."""

    pool: Any  # asyncpg.Pool
    loans: LoanService
    core: CoreActions

    def money(self, minor: int) -> str:
        return self.core.money(minor)

    async def products(self, ctx: ActionContext) -> ActionResult:
        offered = await self.loans.products(self.pool, active_only=True)
        mine = [p for p in offered if p.currency == self.core.currency]
        items = [{"code": p.code, "name": p.name} for p in mine]
        first = items[0] if items else {"code": None, "name": None}
        return ActionResult(
            vars={
                "loan_products": items,
                "loan_products_count": len(items),
                "loan_product": first["code"],
                "loan_product_name": first["name"],
            }
        )

    async def offered(self) -> list[Product]:
        """The active products in the gateway's currency, by code."""
        found = await self.loans.products(self.pool, active_only=True)
        return [p for p in found if p.currency == self.core.currency]

    def choose(
        self, offered: list[Product], *, amount_minor: int, tier: str, registered_at: datetime
    ) -> Choice:
        """The product an amount alone applies for (core.loans.choice), as of the loan
        service's clock."""
        now = self.loans.clock.now()
        return choose_product(
            offered,
            currency=self.core.currency,
            amount_minor=amount_minor,
            tier=tier,
            account_age_days=max(0, (now - registered_at).days),
            today=now.date(),
        )

    async def quote(self, ctx: ActionContext) -> ActionResult:
        try:
            q = await self.loans.quote(
                self.pool,
                msisdn=ctx.msisdn,
                product_code=_var(ctx, "loan_product"),
                amount_minor=_amount(ctx),
            )
        except E.LoanRefused as exc:
            raise _loan_refusal(exc, ctx.language) from None
        return ActionResult(
            vars={
                "product_name": q.product.name,
                "amount": self.money(q.principal_minor),
                "fee": self.money(q.fee_minor),
                "interest": self.money(q.interest_minor),
                "total_due": self.money(q.total_minor),
                "due_date": day(q.maturity_date),
            }
        )

    async def verify_to_move(self, ctx: ActionContext) -> None:
        """The PIN, unless this request handled again (`ctx.again`) is already on record with
        the loan service (as CoreActions.verify_to_move for transfers)."""
        if ctx.again and await self.loans.handled(self.pool, ctx.msisdn, ctx.idempotency_key):
            return
        await self.core.verify(ctx)

    async def apply(self, ctx: ActionContext) -> ActionResult:
        await self.verify_to_move(ctx)
        amount = _amount(ctx)
        product = _var(ctx, "loan_product")
        result = await settle(
            lambda: self.loans.apply(
                self.pool,
                msisdn=ctx.msisdn,
                product_code=product,
                amount_minor=amount,
                channel=self.core.channel,
                idempotency_key=ctx.idempotency_key,
            ),
            what="loan application",
        )
        refusal = result.refusal_error()
        if refusal is not None:
            raise _loan_refusal(refusal, ctx.language)
        loan = result.loan
        if loan is None:  # waiting for a loan officer
            return ActionResult(
                vars={
                    "loan_status": "review",
                    "reference": f"LN{result.application.id}",
                    "amount": self.money(amount),
                }
            )
        return ActionResult(
            vars={
                "loan_status": "approved",
                "reference": loan.disbursement_ref or f"LN{result.application.id}",
                "amount": self.money(loan.principal_minor),
                "total_due": self.money(
                    loan.principal_minor + loan.interest_minor + loan.fee_minor
                ),
                "due_date": day(loan.maturity_date),
            },
            receipted=True,  # the disbursement's notice
        )

    async def status(self, ctx: ActionContext) -> ActionResult:
        found = await self.loans.status(self.pool, ctx.msisdn)
        if found is None:
            return ActionResult(vars={"has_loan": False})
        due = found.next_due_date or found.loan.maturity_date
        return ActionResult(
            vars={
                "has_loan": True,
                "amount_due": self.money(found.outstanding_minor),
                "due_date": day(due),
            }
        )

    async def repay(self, ctx: ActionContext) -> ActionResult:
        await self.verify_to_move(ctx)
        amount = _amount(ctx)
        try:
            paid = await settle(
                lambda: self.loans.repay(
                    self.pool,
                    msisdn=ctx.msisdn,
                    amount_minor=amount,
                    idempotency_key=ctx.idempotency_key,
                    channel=self.core.channel,
                ),
                what="loan repayment",
            )
        except E.Overpayment as exc:
            owed = exc.details.get("outstanding_minor")
            raise E.Overpayment(
                exc.message, owed=self.money(owed) if isinstance(owed, int) else ""
            ) from None
        wallet = await transfers.balance(
            self.pool, ctx.msisdn, self.core.currency, self.core.country_code
        )
        return ActionResult(
            vars={
                "reference": paid.repayment.ledger_ref or f"LN{paid.loan.id}",
                "amount": self.money(paid.repayment.amount_minor),
                "amount_due": self.money(paid.outstanding_minor),
                "cleared": paid.outstanding_minor == 0,
                "balance": self.money(wallet),
            },
            receipted=True,  # the repayment's notice
        )

    def functions(self) -> dict[str, ActionFn]:
        return {
            "loans.products": self.products,
            "loans.quote": self.quote,
            "loans.apply": self.apply,
            "loans.status": self.status,
            "loans.repay": self.repay,
        }


LATE_RESULT_KIND = "ussd.late_result"


def _dedupe_key(key: str) -> str:
    """`key` as an outbox dedupe key (a digest of it when longer than the outbox takes)."""
    if len(key) > outbox.MAX_DEDUPE_KEY_CHARS:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def result_sms_key(idempotency_key: str) -> str:
    """The late result's dedupe key in the outbox: one result SMS per step, whoever sends it
    (the engine's notifier, given `{key}:sms`, or the settler of its pending record)."""
    return _dedupe_key(idempotency_key + ":sms")


async def _enqueue_result(
    db: Any, *, msisdn: str, text: str, kind: str, dedupe_key: str, language: str = "en"
) -> None:
    """One result SMS under its dedupe key. Another text queued under the key already (the
    settler's "did not go through" and the engine's late answer, racing) is the result the
    customer gets: the first one queued, never both."""
    try:
        await outbox.enqueue(
            db,
            channel=OUTBOX_CHANNEL,
            recipient=msisdn,
            body=text[:LATE_RESULT_MAX_CHARS],
            kind=kind,
            language=language,
            dedupe_key=dedupe_key,
        )
    except E.IdempotencyConflict:
        log.info("a result SMS was already queued for this step", extra={"kind": kind})


class OutboxNotifier:
    """The late-result SMS: a row in the core's outbox (sent by the dispatcher, at least once).
    The step's idempotency key is the row's dedupe key, so a retried notify (after a crash
    between the action and the enqueue, say) queues the SMS once."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def notify(self, *, msisdn: str, text: str, kind: str, idempotency_key: str) -> None:
        await _enqueue_result(
            self.pool, msisdn=msisdn, text=text, kind=kind, dedupe_key=_dedupe_key(idempotency_key)
        )


# The loan actions a promise may be settled for, and what the loan service calls the request.
LOAN_REQUESTS = MappingProxyType({"loans.apply": "apply", "loans.repay": "repay"})
# Reads a promise may be kept for: nothing to settle (the sweeper holds no PIN to read again),
# so an orphaned one is told "could not be completed, nothing changed".
READS = frozenset({"balance", "statement"})
# Changes that are not money, settled or abandoned under the step's key (migration 0840).
CHANGES = frozenset(customers.ABANDONABLE)


class PromiseSettler:
    """Keeps a promised late result (menus.pending) whose owner could not: in ONE transaction,
    what was done under the step's key if anything was (told by its own notice, or by the
    result SMS queued here), or the key abandoned and the customer's "did not go through" SMS
    queued under the result's dedupe key. Either both commit or neither: an abandonment nobody
    is told of, or an SMS saying nothing moved while the key stays open, cannot happen.

    A transfer or a withdrawal is the ledger's movement under the step's own key
    (core.transfers.abandon). A loan request is the loan service's, which keys its ledger
    movements itself: it is settled or abandoned where the service claims the request key
    (core.loans.store.abandon_request, migration 0820), so no later application or repayment
    under the key happens, and no disbursement or repayment follows from one. An application
    the system refused or sent to review has no notice of its own: its decision is told
    (menus.loans.service.late_result_text). A registration or a PIN change is settled or
    abandoned where the core makes it (core.customers.abandon_request, migration 0840): done
    under the key, the customer is told so (menus.messages.DONE); not, nothing changes under
    the key afterwards. A read (balance, statement) changed nothing and cannot be done again
    here (no PIN): the customer is told it could not be completed, to try again."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def settles(self, action: str) -> bool:
        return action in NOT_DONE

    def changes(self, action: str) -> bool:
        return self.settles(action) and action not in READS

    async def settle_or_abandon(self, pending: Pending) -> bool:
        if not self.settles(pending.action):
            raise E.ValidationFailed("Not an action settled here", field="action")
        try:
            async with self.pool.acquire(timeout=CALL_TIMEOUT_S) as conn, conn.transaction():
                done, told = await self._settle(conn, pending)
                if done and told is None:
                    return True
                await _enqueue_result(
                    conn,
                    msisdn=pending.msisdn,
                    text=told or not_done_text(pending.action, pending.language),
                    kind=LATE_RESULT_KIND,
                    language=pending.language,
                    dedupe_key=result_sms_key(pending.key),
                )
        except _DOWN as exc:
            raise E.Unavailable(reason=type(exc).__name__) from None
        return done

    async def _settle(self, conn: Any, pending: Pending) -> tuple[bool, str | None]:
        """(whether it was done under the key, the text to tell when no notice of its own is
        the result); not done: the key abandoned, for whatever could still be done under it."""
        action = pending.action
        if action in READS:
            return False, None
        if action in CHANGES:
            done = await customers.abandon_request(conn, pending.msisdn, pending.key, action)
            return done, done_text(action, pending.language) if done else None
        request = LOAN_REQUESTS.get(action)
        if request is not None:
            return await self._loan(conn, pending, request)
        return await transfers.abandon(conn, pending.key) is not None, None

    @staticmethod
    async def _loan(conn: Any, pending: Pending, request: str) -> tuple[bool, str | None]:
        """(whether the loan service did the request, the text to tell when its own notice is
        not the result)."""
        found = await loan_store.abandon_request(conn, pending.msisdn, pending.key, request)
        if found != "apply":
            return found is not None, None
        app = await loan_store.find_application(conn, pending.msisdn, pending.key)
        assert app is not None  # found under the key's lock, which this transaction holds
        return True, late_result_text(app, pending.language)


def bind(
    bindings: MenuBindings,
    *,
    pool: Any,
    cipher: FieldCipher,
    currency: str,
    country_code: str,
    pin_rounds: int,
    loans: LoanService | None = None,
    withdrawal_gate: WithdrawalGate | None = None,
) -> None:
    """Bind the core implementations (and the loan actions when `loans` is given). An action
    bound already (a test's stand-in, an extension) keeps its implementation; so does a
    notifier set already."""
    actions = CoreActions(pool, cipher, currency, country_code, pin_rounds, withdrawal_gate)
    functions: Mapping[str, ActionFn] = actions.functions()
    if loans is not None:
        functions = {**functions, **LoanActions(pool, loans, actions).functions()}
    for name, fn in functions.items():
        if bindings.function(name) is None:
            bindings.bind(name, _guard(fn))
    if bindings.notifier is None:
        bindings.notifier = OutboxNotifier(pool)
    if bindings.settler is None:
        bindings.settler = PromiseSettler(pool)
