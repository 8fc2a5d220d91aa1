"""Property test: random sequences of deposits, P2P transfers, cash-in, cash-out and reversals
against an in-memory model of balances, fees, commissions and KYC limits (tier Basic). After
every sequence the database's balances equal the model's and the ledger invariants hold."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import errors as E
from core.agents import agent_balances
from core.crypto import FieldCipher
from core.fees import DEMO_TARIFFS, Band
from core.ledger import check_ledger, system_balance
from core.limits import DEFAULT_LIMITS_KES
from core.transfers import balance, cash_in, cash_out, deposit, reverse, send_money
from tests.integration.core.conftest import make_agent, make_customer

LIMITS = DEFAULT_LIMITS_KES["Basic"]
FLOAT = 50_000_00
CUSTOMERS = 3
EDGES = [1, 49_99, 50_00, 100_00, 100_01, 500_00, 2_500_00, 2_500_01, 20_000_00]

amounts = st.one_of(st.integers(1, 20_000_00), st.sampled_from(EDGES))
who = st.integers(0, CUSTOMERS - 1)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), who, amounts),
        st.tuples(st.just("p2p"), who, who, amounts),
        st.tuples(st.just("cash_in"), who, amounts),
        st.tuples(st.just("cash_out"), who, amounts),
        st.tuples(st.just("reverse"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=25,
)


def band(kind: str, amount: int) -> Band:
    for b in DEMO_TARIFFS.get(kind, []):
        if b.min_minor <= amount <= b.max_minor:
            return b
    return Band(amount, amount, 0, 0)


@dataclass
class Posted:
    legs: dict[str, int]
    reversal: bool = False
    reversed: bool = False
    reference: str = ""


@dataclass
class Model:
    acct: dict[str, int] = field(default_factory=dict)  # c0.., float, commission, fees, bank
    debited: dict[str, int] = field(default_factory=dict)  # today's (and this month's) debits
    posted: list[Posted] = field(default_factory=list)

    def get(self, name: str) -> int:
        return self.acct.get(name, 0)

    def post(self, legs: dict[str, int], reversal: bool = False) -> Posted:
        assert sum(legs.values()) == 0
        for name, delta in legs.items():
            self.acct[name] = self.get(name) + delta
        self.posted.append(Posted(legs, reversal))
        return self.posted[-1]

    def debit_check(self, c: str, amount: int, total: int) -> type[E.CoreError] | None:
        if self.get(c) < total:
            return E.InsufficientFunds
        if self.debited.get(c, 0) + amount > LIMITS.daily_debit_minor:
            return E.LimitExceeded
        return None

    def p2p(self, a: str, b: str, amount: int) -> type[E.CoreError] | dict[str, int]:
        if a == b:
            return E.SameAccount
        if amount > LIMITS.per_transaction_minor:
            return E.LimitExceeded
        fee = band("p2p", amount).fee_minor
        error = self.debit_check(a, amount, amount + fee)
        if error is None and self.get(b) + amount > LIMITS.max_balance_minor:
            error = E.LimitExceeded
        if error is not None:
            return error
        self.debited[a] = self.debited.get(a, 0) + amount
        return {a: -(amount + fee), b: amount, "fees": fee}

    def cash_out(self, c: str, amount: int) -> type[E.CoreError] | dict[str, int]:
        if amount > LIMITS.per_transaction_minor:
            return E.LimitExceeded
        b = band("cash_out", amount)
        error = self.debit_check(c, amount, amount + b.fee_minor)
        if error is not None:
            return error
        self.debited[c] = self.debited.get(c, 0) + amount
        return {
            c: -(amount + b.fee_minor),
            "float": amount,
            "fees": b.fee_minor - b.commission_minor,
            "commission": b.commission_minor,
        }

    def cash_in(self, c: str, amount: int) -> type[E.CoreError] | dict[str, int]:
        if self.get("float") < amount:
            return E.InsufficientFunds
        if self.get(c) + amount > LIMITS.max_balance_minor:
            return E.LimitExceeded
        commission = band("cash_in", amount).commission_minor
        return {"float": -amount, c: amount, "fees": -commission, "commission": commission}

    def deposit(self, c: str, amount: int) -> type[E.CoreError] | dict[str, int]:
        if self.get(c) + amount > LIMITS.max_balance_minor:
            return E.LimitExceeded
        return {"bank": -amount, c: amount}

    def reverse(self, target: Posted) -> type[E.CoreError] | dict[str, int]:
        if target.reversal:
            return E.ValidationFailed
        if target.reversed:
            return E.AlreadyReversed
        legs = {name: -delta for name, delta in target.legs.items() if delta}
        for name, delta in legs.items():
            if name not in {"fees", "bank"} and self.get(name) + delta < 0:
                return E.InsufficientFunds
        return legs


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=ops)
async def test_random_sequences_match_the_model(
    core_db: asyncpg.Pool, cipher: FieldCipher, sequence: list[tuple[object, ...]]
) -> None:
    names = [await make_customer(core_db, cipher) for _ in range(CUSTOMERS)]
    agent = await make_agent(core_db, FLOAT)
    fees_before = await system_balance(core_db, "fee_income", "KES")
    bank_before = await system_balance(core_db, "settlement", "KES")
    model = Model(acct={"float": FLOAT})
    for op in sequence:
        await _step(core_db, model, names, agent, op)
    for i, msisdn in enumerate(names):
        assert await balance(core_db, msisdn) == model.get(f"c{i}"), (i, sequence)
    agent_now = await agent_balances(core_db, agent)
    assert agent_now.float_minor == model.get("float")
    assert agent_now.commission_minor == model.get("commission")
    assert await system_balance(core_db, "fee_income", "KES") - fees_before == model.get("fees")
    assert await system_balance(core_db, "settlement", "KES") - bank_before == model.get("bank")
    report = await check_ledger(core_db)
    assert report.ok, report.lines()


async def _step(
    db: asyncpg.Pool, model: Model, names: list[str], agent: str, op: tuple[object, ...]
) -> None:
    kind = op[0]
    key = "prop-" + secrets.token_hex(8)
    common = {"idempotency_key": key, "channel": "prop"}
    target: Posted | None = None
    if kind == "reverse":
        if not model.posted:
            return
        target = model.posted[int(op[1]) % len(model.posted)]  # type: ignore[call-overload]
        expected = model.reverse(target)
        call = reverse(db, reference=target.reference, **common)
    else:
        c, amount = f"c{op[1]}", int(op[-1])  # type: ignore[call-overload]
        msisdn = names[int(op[1])]  # type: ignore[call-overload]
        if kind == "p2p":
            other = f"c{op[2]}"
            expected = model.p2p(c, other, amount)
            call = send_money(
                db,
                sender=msisdn,
                recipient=names[int(op[2])],  # type: ignore[call-overload]
                amount_minor=amount,
                **common,
            )
        elif kind == "deposit":
            expected = model.deposit(c, amount)
            call = deposit(db, msisdn=msisdn, amount_minor=amount, **common)
        elif kind == "cash_in":
            expected = model.cash_in(c, amount)
            call = cash_in(db, agent_code=agent, msisdn=msisdn, amount_minor=amount, **common)
        else:
            expected = model.cash_out(c, amount)
            call = cash_out(db, agent_code=agent, msisdn=msisdn, amount_minor=amount, **common)
    try:
        result = await call
    except E.CoreError as exc:
        assert isinstance(expected, type) and isinstance(exc, expected), (op, exc, expected)
        return
    assert isinstance(expected, dict), (op, result, expected)
    posted = model.post(expected, reversal=kind == "reverse")
    posted.reference = result.reference
    if target is not None:
        target.reversed = True
