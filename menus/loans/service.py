"""The loan service: what channels (USSD, SMS) and the admin API call.

    products(pool, *, active_only=False) -> list[Product]
    quote(pool, *, msisdn=, product_code=, amount_minor=) -> LoanQuote
    apply(pool, *, msisdn=, product_code=, amount_minor=, channel=, idempotency_key=)
        -> ApplyResult (its `decision`: approve / review / refuse with a code and a message;
           `refusal_error()` turns a refusal into a LoanRefused to raise)
    repay(pool, *, msisdn=, amount_minor=, idempotency_key=, channel=) -> RepayResult
    status(pool, msisdn) -> LoanStatus | None (None: no open loan)
    approve(pool, application_id, *, actor=, note=) -> ReviewResult
    reject(pool, application_id, *, actor=, reason=) -> ReviewResult
    write_off(pool, loan_id, *, actor=) -> Loan

An application is scored outside any transaction (an external scorer may be slow; it is bounded
by `scorer_timeout_s`, and a failure sends the application to review), then decided and stored
in one transaction under a per-MSISDN advisory lock, so the in-flight and velocity rules see
every concurrent application. Approval (automatic or by an officer) is followed by disbursement
in its own transaction: the application moves to `disbursed`, the loan and its schedule are
written, the ledger moves the money, and the loan becomes `active`, all or nothing. Every status
change asks the shared `transitions` machine (menus.loans.lifecycle) for its destination; core
and the database trigger check the same table again.

An application's and a repayment's transaction claims its request key (the channel's
idempotency key, per customer) before anything else (core.loans.store.claim_request, migration
0820): a request given up as a late USSD result (menus.bindings.PromiseSettler) is refused there
with MoneyAbandoned, so nothing is applied for, disbursed or repaid under its key.

Money needs a `LoanLedger` and applications a `CustomerDirectory` (core.loans.ports; the
banking core's are in core.loans.core_ledger); without them the service answers those calls
with `Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from core.clock import Clock
from core.errors import (
    AccountClosed,
    CoreError,
    CustomerNotFound,
    IdempotencyConflict,
    LoanRefused,
    NotFound,
    Overpayment,
    Unavailable,
    ValidationFailed,
    WalletLocked,
)
from core.loans import book, messages, store
from core.loans.allocation import allocate, apply_allocation, due_by, outstanding_minor
from core.loans.arrears import bucket_for, days_past_due
from core.loans.book import InstallmentRow, Loan, Repayment
from core.loans.core_ledger import OutboxNotifier
from core.loans.decision import Decision, DecisionPolicy, Outcome, decide
from core.loans.fraud import ApplicationFacts, FraudLimits, first_refusal
from core.loans.lifecycle import State
from core.loans.ports import CustomerDirectory, CustomerFacts, LoanLedger, Notifier
from core.loans.products import MAX_PRINCIPAL_MINOR, Product, validate_product
from core.loans.schedule import build_schedule
from core.loans.scoring import InternalScorer, Score, Scorer, ScoringFacts
from core.loans.store import Application
from core.loans.text import format_minor
from menus.loans.lifecycle import LIFECYCLE, LoanLifecycle

log = logging.getLogger("menus.loans")

Pool = Any  # asyncpg.Pool
MSISDN_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
KEY_RE = re.compile(r"^[\x21-\x7e]{1,100}$")  # printable ASCII, no spaces
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_]{1,15}$")
SCORING_WINDOW = timedelta(days=90)
DEFAULT_SCORER_TIMEOUT_S = 3.0
NOTE_MAX = 500
PRODUCT_CODE_MAX = 32
SYSTEM = "system"
DISBURSEMENT_FAILED = "DISBURSEMENT_FAILED"
# An approved application with no loan this long after its last change is taken to be one
# whose disbursement never committed (a request still disbursing holds its row lock anyway).
RESUME_AFTER_S = 30.0
DISBURSEMENT_FAILED_TEXT = "We could not send the money now; please try again later"
REJECT_REASON_SMS_CHARS = 100  # an officer's reason, cut so the rejection notice is one SMS


@dataclass(frozen=True, slots=True)
class LoanPolicy:
    fraud: FraudLimits = field(default_factory=FraudLimits)
    decision: DecisionPolicy = field(default_factory=DecisionPolicy)
    scorer_timeout_s: float = DEFAULT_SCORER_TIMEOUT_S
    notify_channel: str = "sms"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    application: Application
    decision: Decision
    loan: Loan | None = None
    replayed: bool = False

    def refusal_error(self) -> LoanRefused | None:
        """The refusal as an error a channel can raise (its code is the decision's), or None
        when the application was approved or waits for review."""
        if self.decision.outcome is not Outcome.REFUSE:
            return None
        details = dict(self.decision.details)
        if self.decision.limit_minor is not None:
            details["limit_minor"] = self.decision.limit_minor
        return LoanRefused(self.decision.message, code=self.decision.code, **details)


@dataclass(frozen=True, slots=True)
class LoanQuote:
    """What a loan would cost, for the confirmation screen before the PIN."""

    product: Product
    currency: str
    principal_minor: int
    fee_minor: int  # the facility fee, due with the first installment
    interest_minor: int  # over the whole term
    total_minor: int  # principal + interest + fee: everything the customer will repay
    installments: int
    first_due_date: date
    first_due_minor: int
    maturity_date: date  # the last due date (the first, for a one-installment loan)


@dataclass(frozen=True, slots=True)
class ReviewResult:
    application: Application
    loan: Loan | None = None
    replayed: bool = False  # the same officer's earlier approval, answered again


@dataclass(frozen=True, slots=True)
class RepayResult:
    loan: Loan
    repayment: Repayment
    outstanding_minor: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class LoanStatus:
    loan: Loan
    installments: list[InstallmentRow]
    outstanding_minor: int
    due_now_minor: int  # fallen due by today and unpaid
    next_due_date: date | None
    next_due_minor: int


def check_msisdn(msisdn: str) -> str:
    if not isinstance(msisdn, str) or not MSISDN_RE.match(msisdn):
        raise ValidationFailed("The phone number must be E.164, like +254712345678")
    return msisdn


def check_amount(amount_minor: int) -> int:
    ok = isinstance(amount_minor, int) and not isinstance(amount_minor, bool)
    if not ok or not 0 < amount_minor <= MAX_PRINCIPAL_MINOR:
        raise ValidationFailed("The amount must be a positive whole number of minor units")
    return amount_minor


def check_key(key: str, channel: str) -> None:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValidationFailed("The idempotency key must be 1-100 printable characters")
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise ValidationFailed("The channel must be a short lowercase name like ussd or sms")


def decision_of(app: Application) -> Decision:
    """The decision as the customer should see it now: an application waiting for an officer
    reads as review, an approved or disbursed one as approved, a rejected one as refused (an
    approval that could not be disbursed says so)."""
    limit = app.score_limit_minor
    known = {"currency": app.currency}  # the rest of a refusal's figures is not stored
    own = Decision(Outcome(app.decision), app.decision_code, app.decision_message, limit, known)
    if app.status == State.APPLIED:
        return own
    if app.status in (State.APPROVED, State.DISBURSED):
        if own.outcome is Outcome.APPROVE:
            return own
        return Decision(Outcome.APPROVE, "APPROVED", "Your loan is approved", limit, known)
    if own.outcome is Outcome.REFUSE:
        return own
    if (app.note or "").startswith(DISBURSEMENT_FAILED):
        failed = DISBURSEMENT_FAILED_TEXT
        return Decision(Outcome.REFUSE, DISBURSEMENT_FAILED, failed, limit, known)
    return Decision(Outcome.REFUSE, "REJECTED", "Your application was not approved", limit, known)


def late_result_text(app: Application, language: str) -> str | None:
    """The SMS that tells a customer who was promised this application's result by SMS, when
    the request is found settled after its owner could not say (menus.bindings.PromiseSettler),
    or None when a loan notice is, or will be, that result: a disbursed loan's, the one of a
    disbursement still to come (an approval: the request's own retry or
    `resume_disbursements` finishes it), an officer's decision. The system's decisions (a
    refusal, a review, a disbursement that failed) send no notice of their own: the screen
    said them, and this says what the screen would have."""
    if app.loan_id is not None or app.status in (State.APPROVED, State.DISBURSED):
        return None
    if app.decided_by not in (None, SYSTEM):
        return None
    shown = decision_of(app)
    text = messages.reason(shown.code, language, shown.details) or shown.message
    if shown.outcome is Outcome.REFUSE:
        return messages.notice("loan_rejected", language, {"reason": text})
    return text


class LoanService:
    def __init__(
        self,
        *,
        clock: Clock,
        policy: LoanPolicy | None = None,
        scorer: Scorer | None = None,
        customers: CustomerDirectory | None = None,
        ledger: LoanLedger | None = None,
        notifier: Notifier | None = None,
        lifecycle: LoanLifecycle = LIFECYCLE,
    ) -> None:
        self.clock = clock
        self.policy = policy or LoanPolicy()
        self.scorer: Scorer = scorer or InternalScorer()
        self.customers = customers
        self.ledger = ledger
        self.notifier: Notifier = notifier or OutboxNotifier()
        self.lifecycle = lifecycle

    def require_ledger(self) -> LoanLedger:
        if self.ledger is None:
            raise Unavailable("Loans cannot move money until the banking core is connected")
        return self.ledger

    def _directory(self) -> CustomerDirectory:
        if self.customers is None:
            raise Unavailable("Loans cannot check customers until the banking core is connected")
        return self.customers

    async def notify(
        self,
        conn: Any,
        msisdn: str,
        kind: str,
        params: dict[str, Any],
        loan_id: int | None,
        *,
        template: str | None = None,
        transfer_reference: str | None = None,
    ) -> None:
        """Queue a notice (core.loans.messages `template`, default `kind`) in the customer's
        language; one about a ledger transfer replaces that transfer's receipt."""
        await self.notifier.enqueue(
            conn,
            channel=self.policy.notify_channel,
            recipient=msisdn,
            kind=kind,
            params=params,
            template=template,
            loan_id=loan_id,
            transfer_reference=transfer_reference,
        )

    # --- products ------------------------------------------------------------------------------

    async def create_product(self, pool: Pool, data: dict[str, Any], actor: str) -> Product:
        product = validate_product(data)
        async with pool.acquire() as conn:
            return await store.insert_product(conn, product, actor)

    async def products(self, pool: Pool, *, active_only: bool = False) -> list[Product]:
        async with pool.acquire() as conn:
            return await store.list_products(conn, active_only=active_only)

    # --- applications --------------------------------------------------------------------------

    async def apply(
        self,
        pool: Pool,
        *,
        msisdn: str,
        product_code: str,
        amount_minor: int,
        channel: str,
        idempotency_key: str,
    ) -> ApplyResult:
        check_msisdn(msisdn)
        check_amount(amount_minor)
        check_key(idempotency_key, channel)
        async with pool.acquire() as conn:
            earlier = await store.find_application(conn, msisdn, idempotency_key)
            if earlier is not None:
                return await self._replay(pool, earlier, product_code, amount_minor)
            product = await self._offered(conn, product_code)
            customer = await self._customer(conn, msisdn)
            facts = await self._scoring_facts(conn, msisdn, product, customer.registered_at)
        score = await self._score(facts, product)
        async with pool.acquire() as conn, conn.transaction():
            # The request key first, the applicant's lock next (the order of migration 0820):
            # a request given up (a late USSD result settled as abandoned) is refused here.
            await store.claim_request(conn, msisdn, idempotency_key)
            await store.lock_applicant(conn, msisdn)
            earlier = await store.find_application(conn, msisdn, idempotency_key)
            if earlier is not None:
                return await self._replay(pool, earlier, product_code, amount_minor)
            now = self.clock.now()
            in_flight, recent, open_loans = await store.applicant_counts(conn, msisdn, now)
            app_facts = ApplicationFacts(
                msisdn, customer.tier, facts.account_age_days, in_flight, recent, open_loans
            )
            refusal = first_refusal(app_facts, product, self.policy.fraud)
            decision = decide(product, amount_minor, refusal, score, self.policy.decision)
            app = await store.insert_application(
                conn,
                msisdn=msisdn,
                product=product,
                principal_minor=amount_minor,
                channel=channel,
                idempotency_key=idempotency_key,
                decision=decision,
                score=score,
                now=now,
            )
            if decision.outcome is not Outcome.REVIEW:
                trigger = "approve" if decision.outcome is Outcome.APPROVE else "reject"
                app = await self._move_app(conn, app, trigger, SYSTEM)
        app, loan = await self._disburse(pool, app, SYSTEM, answered=True)
        shown = decision_of(app)
        if shown.code == decision.code:  # the figures behind it are known now, not stored
            shown = replace(shown, details={**shown.details, **decision.details})
        return ApplyResult(app, shown, loan)

    async def _customer(self, conn: Any, msisdn: str) -> CustomerFacts:
        customer = await self._directory().customer(conn, msisdn)
        if customer is None:
            raise CustomerNotFound(f"No customer with number {msisdn}", msisdn=msisdn)
        if customer.status == "closed":
            raise AccountClosed(msisdn=msisdn)
        if not customer.active:
            raise WalletLocked(msisdn=msisdn)
        return customer

    async def quote(
        self, pool: Pool, *, msisdn: str, product_code: str, amount_minor: int
    ) -> LoanQuote:
        """The fee, interest, total and due dates of a loan as it would be disbursed today,
        after the rules that need no score: LoanRefused (code AMOUNT_OUT_OF_RANGE,
        TIER_NOT_ALLOWED, ACCOUNT_TOO_NEW, TOO_MANY_APPLICATIONS, APPLICATION_IN_FLIGHT or
        LOAN_OUTSTANDING) when the application would be refused anyway. The score and its
        limit are decided by `apply`."""
        check_msisdn(msisdn)
        check_amount(amount_minor)
        async with pool.acquire() as conn:
            product = await self._offered(conn, product_code)
            if not product.principal_min_minor <= amount_minor <= product.principal_max_minor:
                low = format_minor(product.principal_min_minor, product.currency)
                high = format_minor(product.principal_max_minor, product.currency)
                raise LoanRefused(
                    f"Borrow between {low} and {high}",
                    code="AMOUNT_OUT_OF_RANGE",
                    min_minor=product.principal_min_minor,
                    max_minor=product.principal_max_minor,
                    currency=product.currency,
                )
            customer = await self._customer(conn, msisdn)
            now = self.clock.now()
            in_flight, recent, open_loans = await store.applicant_counts(conn, msisdn, now)
        age_days = max(0, (now - customer.registered_at).days)
        app_facts = ApplicationFacts(msisdn, customer.tier, age_days, in_flight, recent, open_loans)
        refusal = first_refusal(app_facts, product, self.policy.fraud)
        if refusal is not None:
            raise LoanRefused(refusal.message, code=refusal.code, **refusal.details)
        schedule = build_schedule(product, amount_minor, now.date())
        first = schedule.installments[0]
        return LoanQuote(
            product=product,
            currency=product.currency,
            principal_minor=amount_minor,
            fee_minor=schedule.fee_minor,
            interest_minor=schedule.interest_minor,
            total_minor=schedule.total_minor,
            installments=len(schedule.installments),
            first_due_date=first.due_date,
            first_due_minor=first.total_minor,
            maturity_date=schedule.maturity_date,
        )

    async def _offered(self, conn: Any, product_code: str) -> Product:
        if not isinstance(product_code, str) or not 1 <= len(product_code) <= PRODUCT_CODE_MAX:
            raise NotFound("This loan product is not offered", code="PRODUCT_NOT_FOUND")
        product = await store.get_product(conn, code=product_code)
        if not product.active:
            raise NotFound("This loan product is not offered", code="PRODUCT_NOT_FOUND")
        return product

    async def _replay(
        self, pool: Pool, app: Application, product_code: str, amount_minor: int
    ) -> ApplyResult:
        if app.product_code != product_code or app.principal_minor != amount_minor:
            raise IdempotencyConflict(
                "This idempotency key was already used for another application"
            )
        if app.status == State.APPROVED:
            # Approved, and its disbursement never committed (the first try met an outage, or
            # the process died): the customer asking again gets the money now, once.
            app, loan = await self._disburse(pool, app, SYSTEM, answered=True)
            return ApplyResult(app, decision_of(app), loan, replayed=True)
        loan = None
        if app.loan_id is not None:
            async with pool.acquire() as conn:
                loan = await book.get_loan(conn, app.loan_id)
        return ApplyResult(app, decision_of(app), loan, replayed=True)

    async def _scoring_facts(
        self, conn: Any, msisdn: str, product: Product, registered_at: datetime
    ) -> ScoringFacts:
        now = self.clock.now()
        on_time, late, defaulted = await store.repayment_history(conn, msisdn)
        activity = await self.require_ledger().wallet_activity(
            conn, msisdn, product.currency, now - SCORING_WINDOW
        )
        return ScoringFacts(
            msisdn=msisdn,
            account_age_days=max(0, (now - registered_at).days),
            inflow_90d_minor=activity.inflow_minor,
            outflow_90d_minor=activity.outflow_minor,
            transactions_90d=activity.transactions,
            loans_repaid_on_time=on_time,
            loans_repaid_late=late,
            loans_defaulted=defaulted,
        )

    async def _score(self, facts: ScoringFacts, product: Product) -> Score | None:
        """The scorer's answer, or None when it fails or takes too long (-> manual review)."""
        try:
            async with asyncio.timeout(self.policy.scorer_timeout_s):
                return await self.scorer.score(facts, product)
        except TimeoutError:
            log.warning("loan scorer timed out", extra={"scorer": self.scorer.name})
        except Exception:
            log.exception("loan scorer failed", extra={"scorer": self.scorer.name})
        return None

    async def _move_app(
        self, conn: Any, app: Application, trigger: str, actor: str, note: str | None = None
    ) -> Application:
        dest = self.lifecycle.next_state(app.status, trigger)
        return await store.move_application(
            conn, app, trigger=trigger, dest=dest, actor=actor, now=self.clock.now(), note=note
        )

    async def move_loan(self, conn: Any, loan: Loan, trigger: str, actor: str) -> Loan:
        dest = self.lifecycle.next_state(loan.status, trigger)
        return await book.move_loan(
            conn, loan, trigger=trigger, dest=dest, actor=actor, now=self.clock.now()
        )

    async def resume_disbursements(
        self, pool: Pool, *, older_than_s: float = RESUME_AFTER_S, limit: int = 50
    ) -> int:
        """Disburse the applications left approved with no loan (the process or the database
        went away between the approval's commit and the disbursement's) once they are
        `older_than_s` old; how many got their loan. Each is locked and checked again and the
        ledger call carries the application's key, so none is disbursed twice; one the ledger
        now refuses is rejected with the reason, as at the first try."""
        if self.ledger is None:
            return 0
        before = self.clock.now() - timedelta(seconds=older_than_s)
        async with pool.acquire() as conn:
            stalled = await store.stalled_approvals(conn, before, limit)
        done = 0
        for app in stalled:
            try:
                _, loan = await self._disburse(pool, app, SYSTEM)
            except Exception:  # one application's trouble must not hold up the others
                log.exception("loan disbursement not resumed", extra={"application_id": app.id})
                continue
            if loan is not None:
                done += 1
                log.info("loan disbursement resumed", extra={"application_id": app.id})
        return done

    # --- review ----------------------------------------------------------------------------------

    async def approve(
        self, pool: Pool, application_id: int, *, actor: str, note: str | None = None
    ) -> ReviewResult:
        """A loan officer approves an application waiting for review, then it is disbursed.

        Approving again what this officer approved (a retry after a lost answer, a double
        click) answers that approval: with its loan when it was disbursed, the disbursement
        finished now when it stalled. Another officer's decision, the system's or a rejection
        stays a 409 IllegalTransition naming the state."""
        async with pool.acquire() as conn, conn.transaction():
            app = await store.get_application(conn, application_id, for_update=True)
            replayed = _approved_by(app, actor)
            if not replayed:
                app = await self._move_app(conn, app, "approve", actor, _note(note))
        app, loan = await self._disburse(pool, app, actor)
        if loan is None and app.loan_id is not None:
            async with pool.acquire() as conn:
                loan = await book.get_loan(conn, app.loan_id)
        return ReviewResult(app, loan, replayed)

    async def reject(
        self,
        pool: Pool,
        application_id: int,
        *,
        actor: str,
        reason: str | None = None,
        reason_code: str | None = None,
    ) -> ReviewResult:
        """Reject with a reason the customer is told: `reason_code` (one of
        messages.OFFICER_REASONS, sent in the customer's language; `reason` is then the
        officer's note, kept on the application and not sent) or `reason` alone (free text,
        sent as written)."""
        note = _note(reason)
        if reason_code is not None and reason_code not in messages.OFFICER_REASONS:
            raise ValidationFailed(
                f"reason_code is one of {', '.join(messages.OFFICER_REASONS)}",
                field="reason_code",
            )
        if reason_code is None and not note:
            raise ValidationFailed("A rejection needs a reason or a reason_code", field="reason")
        params = (
            {"reason_code": reason_code}
            if reason_code
            else {"reason": note[:REJECT_REASON_SMS_CHARS]}
        )
        history = f"{reason_code}: {note}" if reason_code and note else (reason_code or note)
        history = history[:NOTE_MAX]
        async with pool.acquire() as conn, conn.transaction():
            app = await store.get_application(conn, application_id, for_update=True)
            app = await self._move_app(conn, app, "reject", actor, history)
            await self.notify(conn, app.msisdn, "loan_rejected", params, None)
        return ReviewResult(app)

    async def _disburse(
        self, pool: Pool, app: Application, actor: str, *, answered: bool = False
    ) -> tuple[Application, Loan | None]:
        """Disburse an approved application; without a ledger it stays approved (the banking
        core is not connected yet). If the ledger refuses (the fund is short, the wallet is at
        its cap ...), nothing moved and the application is rejected with the reason. `answered`:
        the customer's own request runs this and its answer says the refusal; otherwise (an
        officer's approval, a resumed disbursement) the customer is told by a notice, in the
        same transaction (before, nobody told them: their last word was "approved" or "under
        review")."""
        if app.status != State.APPROVED or self.ledger is None:
            return app, None
        try:
            async with pool.acquire() as conn, conn.transaction():
                locked = await store.get_application(conn, app.id, for_update=True)
                if locked.status != State.APPROVED:
                    # Settled meanwhile (a retry, another instance's resume): not twice.
                    settled = None
                    if locked.loan_id is not None:
                        settled = await book.get_loan(conn, locked.loan_id)
                    return locked, settled
                loan = await self._disburse_in(conn, locked, actor)
        except Unavailable:
            # Nothing moved, or all of it did: the approval stands, and a retry of the request
            # or resume_disbursements finishes it (a refusal here would tell the customer no).
            raise
        except CoreError as exc:
            log.warning(
                "loan disbursement refused",
                extra={"application_id": app.id, "reason": exc.error_code},
            )
            async with pool.acquire() as conn, conn.transaction():
                current = await store.get_application(conn, app.id, for_update=True)
                if current.status != State.APPROVED:
                    raise
                note = f"{DISBURSEMENT_FAILED}: {exc.error_code}"
                rejected = await self._move_app(conn, current, "reject", SYSTEM, note)
                if not answered:
                    await self.notify(
                        conn,
                        rejected.msisdn,
                        "loan_rejected",
                        {"refusal_code": DISBURSEMENT_FAILED},
                        None,
                    )
            return rejected, None
        async with pool.acquire() as conn:
            return await store.get_application(conn, app.id), loan

    async def _disburse_in(self, conn: Any, app: Application, actor: str) -> Loan:
        """The disbursement of `app`, locked by the caller and still approved."""
        ledger = self.require_ledger()
        app = await self._move_app(conn, app, "disburse", actor)
        product = await store.get_product(conn, product_id=app.product_id)
        now = self.clock.now()
        schedule = build_schedule(product, app.principal_minor, now.date())
        key = f"loan-disburse:{app.id}"
        loan = await book.insert_loan(
            conn,
            app,
            product,
            schedule,
            disbursement_key=key,
            disbursement_ref=None,
            now=now,
        )
        # Active before the money moves: all of it commits together or not at all, and the
        # ledger call takes the fund's lock until the commit, so as little as possible follows
        # it (the reference, the notice, the commit).
        loan = await self.move_loan(conn, loan, "activate", actor)
        receipt = await ledger.disburse(
            conn,
            loan_id=loan.id,
            msisdn=app.msisdn,
            amount_minor=app.principal_minor,
            currency=product.currency,
            idempotency_key=key,
        )
        await book.set_disbursement_ref(conn, loan.id, receipt.reference)
        loan = replace(loan, disbursement_ref=receipt.reference)
        params = {
            "reference": receipt.reference,
            "amount_minor": app.principal_minor,
            "first_minor": schedule.installments[0].total_minor,
            "due_date": schedule.first_due_date,
            "total_minor": schedule.total_minor,
            "balance_minor": receipt.balance_after_minor,
            "currency": product.currency,
        }
        await self.notify(
            conn,
            app.msisdn,
            "loan_disbursed",
            params,
            loan.id,
            transfer_reference=receipt.reference,
        )
        return loan

    # --- repayment -------------------------------------------------------------------------------

    async def repay(
        self,
        pool: Pool,
        *,
        msisdn: str,
        amount_minor: int,
        idempotency_key: str,
        channel: str,
    ) -> RepayResult:
        """Repay from the wallet. The same key again returns the first result."""
        check_msisdn(msisdn)
        check_amount(amount_minor)
        check_key(idempotency_key, channel)
        self.require_ledger()
        async with pool.acquire() as conn, conn.transaction():
            # The request key before the loan's row and the ledger's locks (migration 0820).
            await store.claim_request(conn, msisdn, idempotency_key)
            prior = await book.find_repayment_for(conn, msisdn, idempotency_key)
            if prior is not None:
                return await self._repay_replay(conn, prior, amount_minor)
            loan = await book.open_loan_for(conn, msisdn, for_update=True)
            if loan is None:
                raise NotFound("You have no loan to repay", code="NO_OPEN_LOAN")
            return await self.collect(conn, loan, amount_minor, idempotency_key, channel)

    async def handled(self, pool: Pool, msisdn: str, idempotency_key: str) -> bool:
        """Whether this customer's application or repayment under this key is already on
        record (the same request again replays it): a retried channel message then skips its
        second PIN check."""
        async with pool.acquire() as conn:
            if await store.find_application(conn, msisdn, idempotency_key) is not None:
                return True
            return await book.find_repayment_for(conn, msisdn, idempotency_key) is not None

    async def _repay_replay(self, conn: Any, prior: Repayment, amount_minor: int) -> RepayResult:
        if prior.amount_minor != amount_minor:
            raise IdempotencyConflict("This idempotency key was already used for another amount")
        loan = await book.get_loan(conn, prior.loan_id)
        rows = await book.installments(conn, loan.id)
        owed = outstanding_minor([r.due() for r in rows])
        return RepayResult(loan, prior, owed, replayed=True)

    async def collect(
        self, conn: Any, loan: Loan, amount_minor: int, key: str, channel: str
    ) -> RepayResult:
        """Take `amount_minor` from the wallet into `loan` (locked by the caller): allocate,
        move the money, record, and move the loan to repaid or back to active."""
        rows = await book.installments(conn, loan.id)
        dues = [r.due() for r in rows]
        try:
            allocation = allocate(amount_minor, dues)
        except Overpayment as exc:  # the figure is worded in the loan's currency
            raise Overpayment(exc.message, **exc.details, currency=loan.currency) from None
        receipt = await self.require_ledger().collect(
            conn,
            loan_id=loan.id,
            msisdn=loan.msisdn,
            currency=loan.currency,
            principal_minor=allocation.principal_minor,
            interest_minor=allocation.interest_minor,
            fee_minor=allocation.fee_minor,
            penalty_minor=allocation.penalty_minor,
            idempotency_key=f"loan-repay:{loan.id}:{key}",
        )
        now = self.clock.now()
        repayment = await book.record_repayment(
            conn,
            loan,
            allocation,
            channel=channel,
            idempotency_key=key,
            ledger_ref=receipt.reference,
            now=now,
        )
        after = apply_allocation(dues, allocation)
        owed = outstanding_minor(after)
        dpd = days_past_due(after, self.clock.today())
        if owed == 0:
            loan = await self.move_loan(conn, loan, "repay", SYSTEM)
        elif loan.status == State.OVERDUE and dpd == 0:
            loan = await self.move_loan(conn, loan, "cure", SYSTEM)
        if dpd != loan.days_past_due or owed == 0:
            await book.set_arrears(conn, loan.id, dpd, bucket_for(dpd), now)
            loan = await book.get_loan(conn, loan.id)
        upcoming = [d.due_date for d in after if d.total_minor > 0]
        params = {
            "reference": receipt.reference,
            "amount_minor": amount_minor,
            "outstanding_minor": owed,
            "due_date": upcoming[0] if upcoming else None,
            "balance_minor": receipt.balance_after_minor,
            "currency": loan.currency,
        }
        await self.notify(
            conn,
            loan.msisdn,
            "loan_repayment",
            params,
            loan.id,
            template="loan_repaid" if owed == 0 else "loan_repayment",
            transfer_reference=receipt.reference,
        )
        return RepayResult(loan, repayment, owed)

    # --- status and write-off --------------------------------------------------------------------

    async def status(self, pool: Pool, msisdn: str) -> LoanStatus | None:
        """The open loan's position, or None when the customer owes nothing."""
        check_msisdn(msisdn)
        async with pool.acquire() as conn:
            loan = await book.open_loan_for(conn, msisdn)
            if loan is None:
                return None
            rows = await book.installments(conn, loan.id)
        dues = [r.due() for r in rows]
        upcoming = [d for d in dues if d.total_minor > 0]
        return LoanStatus(
            loan=loan,
            installments=rows,
            outstanding_minor=outstanding_minor(dues),
            due_now_minor=due_by(dues, self.clock.today()),
            next_due_date=upcoming[0].due_date if upcoming else None,
            next_due_minor=upcoming[0].total_minor if upcoming else 0,
        )

    async def write_off(self, pool: Pool, loan_id: int, *, actor: str) -> Loan:
        """Close a defaulted loan as a loss. No money moves; later repayments are refused."""
        async with pool.acquire() as conn, conn.transaction():
            loan = await book.get_loan(conn, loan_id, for_update=True)
            return await self.move_loan(conn, loan, "write_off", actor)


def _approved_by(app: Application, actor: str) -> bool:
    """`actor` approved `app` already (whether or not its loan was disbursed since)."""
    return app.status in (State.APPROVED, State.DISBURSED) and app.decided_by == actor


def _note(text: str | None) -> str:
    cleaned = " ".join((text or "").split())
    if len(cleaned) > NOTE_MAX:
        raise ValidationFailed(f"The note is at most {NOTE_MAX} characters")
    return cleaned
