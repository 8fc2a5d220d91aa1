"""Fraud rules each at their threshold, the scorer, the decision bands, and the lifecycle table
(every illegal transition refused)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from itertools import product as pairs
from typing import Any

import pytest

from core.errors import IllegalTransition, ValidationFailed
from core.loans import fraud, lifecycle
from core.loans.decision import Decision, DecisionPolicy, Outcome, decide
from core.loans.fraud import ApplicationFacts, FraudLimits, first_refusal
from core.loans.lifecycle import TRANSITIONS, TRIGGERS, State, next_state
from core.loans.products import validate_product
from core.loans.scoring import InternalScorer, Score, ScoreWeights, ScoringFacts

PRODUCT = validate_product(
    {
        "code": "QUICK30",
        "name": "Quick 30",
        "currency": "KES",
        "principal_min_minor": 50_000,
        "principal_max_minor": 1_000_000,
        "interest_rate_percent": "7.5",
        "interest_method": "flat",
        "amortization": "equal_installments",
        "repayments": 1,
        "frequency": "days",
        "repayment_every": 30,
        "min_account_age_days": 90,
        "auto_approve_max_minor": 500_000,
        "tiers": ["standard", "premium"],
    }
)
LIMITS = FraudLimits(max_applications_24h=3)
CLEAN = ApplicationFacts(
    msisdn="+254700000001",
    tier="standard",
    account_age_days=400,
    applications_in_flight=0,
    applications_last_24h=0,
    open_loans=0,
)


def test_clean_applicant_passes_every_rule() -> None:
    assert first_refusal(CLEAN, PRODUCT, LIMITS) is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        # Each rule at its threshold: the last passing value, then the first refused one.
        ({"tier": "premium"}, None),
        ({"tier": "PREMIUM"}, None),
        ({"tier": "basic"}, "TIER_NOT_ALLOWED"),
        ({"account_age_days": 90}, None),
        ({"account_age_days": 89}, "ACCOUNT_TOO_NEW"),
        ({"applications_last_24h": 2}, None),  # this one is the 3rd: not more than 3
        ({"applications_last_24h": 3}, "TOO_MANY_APPLICATIONS"),  # this one would be the 4th
        ({"applications_in_flight": 0}, None),
        ({"applications_in_flight": 1}, "APPLICATION_IN_FLIGHT"),
        ({"open_loans": 0}, None),
        ({"open_loans": 1}, "LOAN_OUTSTANDING"),
    ],
)
def test_each_rule_at_its_threshold(change: dict[str, Any], code: str | None) -> None:
    refusal = first_refusal(replace(CLEAN, **change), PRODUCT, LIMITS)
    assert (refusal.code if refusal else None) == code
    if refusal is not None:
        assert refusal.message and len(refusal.message) <= 80  # fits a USSD END screen


def test_velocity_threshold_follows_configuration() -> None:
    facts = replace(CLEAN, applications_last_24h=5)
    assert first_refusal(facts, PRODUCT, FraudLimits(max_applications_24h=6)) is None
    refusal = first_refusal(facts, PRODUCT, FraudLimits(max_applications_24h=5))
    assert refusal is not None and refusal.code == "TOO_MANY_APPLICATIONS"


def test_outstanding_loan_says_outstanding() -> None:
    refusal = fraud.loan_outstanding(replace(CLEAN, open_loans=1), PRODUCT, LIMITS)
    assert refusal is not None and "outstanding" in refusal.message


GOOD = ScoringFacts(
    msisdn="+254700000001",
    account_age_days=365,
    inflow_90d_minor=6_000_000,
    outflow_90d_minor=5_000_000,
    transactions_90d=40,
    loans_repaid_on_time=3,
    loans_repaid_late=0,
    loans_defaulted=0,
)


def test_internal_scorer_components_and_limit() -> None:
    score = InternalScorer().compute(GOOD, PRODUCT)
    # inflows 6,000,000 >= 3 x 1,000,000 and 40 >= 20 transactions: wallet full; tenure
    # 365 >= 180 days: full; three on-time repayments: full.
    assert score.components == {"wallet": 1000, "tenure": 1000, "repayment": 1000}
    assert score.value == 1000
    # capacity: 50 % of inflows = 3,000,000 > product max 1,000,000 -> the product max.
    assert score.limit_minor == 1_000_000


def test_internal_scorer_new_customer() -> None:
    facts = replace(
        GOOD,
        account_age_days=45,
        inflow_90d_minor=300_000,
        transactions_90d=5,
        loans_repaid_on_time=0,
    )
    score = InternalScorer().compute(facts, PRODUCT)
    # wallet: (5/20 + 300000/3000000) / 2 = 0.175 -> 175; tenure 45/180 -> 250; no history 500
    assert score.components == {"wallet": 175, "tenure": 250, "repayment": 500}
    # 0.4 x 175 + 0.3 x 250 + 0.3 x 500 = 295
    assert score.value == 295
    # capacity 150,000 x 0.295 = 44,250 -> down to a whole shilling: 44,200
    assert score.limit_minor == 44_200


def test_weights_change_the_score() -> None:
    facts = replace(GOOD, account_age_days=0)
    tenure_only = InternalScorer(ScoreWeights.parse("tenure=1")).compute(facts, PRODUCT)
    assert tenure_only.value == 0
    no_tenure = InternalScorer(ScoreWeights.parse("wallet=1,repayment=1")).compute(facts, PRODUCT)
    assert no_tenure.value == 1000


def test_defaults_cap_the_repayment_component() -> None:
    facts = replace(GOOD, loans_repaid_on_time=9, loans_defaulted=1)
    assert InternalScorer().components(facts, PRODUCT)["repayment"] == 200
    late = replace(GOOD, loans_repaid_on_time=1, loans_repaid_late=1)
    assert InternalScorer().components(late, PRODUCT)["repayment"] == 750


@pytest.mark.parametrize(
    "text", ["", "wallet", "wallet=x", "wallet=1,wallet=2", "credit=1", "wallet=-1", "wallet=0"]
)
def test_bad_weights(text: str) -> None:
    with pytest.raises(ValidationFailed):
        ScoreWeights.parse(text)


def test_weights_parse() -> None:
    assert ScoreWeights.parse(" wallet=0.5, tenure=0.5 ") == ScoreWeights(
        Decimal("0.5"), Decimal("0.5"), Decimal(0)
    )


POLICY = DecisionPolicy(approve_min_score=600, review_min_score=400)


def _decide(amount: int, value: int = 800, limit: int = 800_000) -> Decision:
    return decide(PRODUCT, amount, None, Score(value, limit), POLICY)


@pytest.mark.parametrize(
    ("amount", "value", "limit", "outcome", "code"),
    [
        (500_000, 800, 800_000, Outcome.APPROVE, "APPROVED"),  # at the auto-approve max
        (500_100, 800, 800_000, Outcome.REVIEW, "REVIEW_AMOUNT"),  # just above it
        (500_000, 600, 800_000, Outcome.APPROVE, "APPROVED"),  # at the approve score
        (500_000, 599, 800_000, Outcome.REVIEW, "REVIEW_SCORE"),  # just below it
        (500_000, 400, 800_000, Outcome.REVIEW, "REVIEW_SCORE"),  # at the review score
        (500_000, 399, 800_000, Outcome.REFUSE, "LOW_SCORE"),  # just below it
        (800_000, 800, 800_000, Outcome.REVIEW, "REVIEW_AMOUNT"),  # at the limit
        (800_100, 800, 800_000, Outcome.REFUSE, "OVER_LIMIT"),  # over the limit
        (50_000, 800, 800_000, Outcome.APPROVE, "APPROVED"),  # product minimum
        (49_999, 800, 800_000, Outcome.REFUSE, "AMOUNT_OUT_OF_RANGE"),
        (1_000_001, 800, 2_000_000, Outcome.REFUSE, "AMOUNT_OUT_OF_RANGE"),
    ],
)
def test_decision_bands(amount: int, value: int, limit: int, outcome: Outcome, code: str) -> None:
    decision = _decide(amount, value, limit)
    assert (decision.outcome, decision.code) == (outcome, code)
    assert decision.message and len(decision.message) <= 80


def test_over_limit_names_the_limit() -> None:
    decision = _decide(900_000)
    assert decision.message == "Your loan limit is KES 8,000.00"
    assert decision.limit_minor == 800_000


def test_refusal_wins_and_a_missing_score_goes_to_review() -> None:
    refusal = fraud.Refusal("LOAN_OUTSTANDING", "You have a loan outstanding; repay it first")
    decision = decide(PRODUCT, 100_000, refusal, Score(1000, 10**9), POLICY)
    assert (decision.outcome, decision.code) == (Outcome.REFUSE, "LOAN_OUTSTANDING")
    decision = decide(PRODUCT, 100_000, None, None, POLICY)
    assert (decision.outcome, decision.code) == (Outcome.REVIEW, "SCORER_UNAVAILABLE")


def test_policy_must_be_ordered() -> None:
    with pytest.raises(ValidationFailed):
        DecisionPolicy(approve_min_score=300, review_min_score=400)
    with pytest.raises(ValidationFailed):
        DecisionPolicy(approve_min_score=1001, review_min_score=400)


ALLOWED = {(trigger, source) for trigger, source, _ in TRANSITIONS}


def test_every_legal_transition() -> None:
    for trigger, source, dest in TRANSITIONS:
        assert next_state(source, trigger) == dest
        assert lifecycle.may_move(source, dest)


@pytest.mark.parametrize(
    ("state", "trigger"),
    [(s.value, t) for s, t in pairs(State, TRIGGERS) if (t, s) not in ALLOWED],
)
def test_every_illegal_transition_is_refused(state: str, trigger: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state(state, trigger)
    assert info.value.details == {"state": state, "trigger": trigger}
    assert info.value.error_code == "ILLEGAL_TRANSITION"


@pytest.mark.parametrize(("state", "trigger"), [("bogus", "approve"), ("applied", "bogus")])
def test_unknown_states_and_triggers(state: str, trigger: str) -> None:
    with pytest.raises(IllegalTransition):
        next_state(state, trigger)


def test_final_states_have_no_way_out() -> None:
    for state in lifecycle.FINAL_STATES:
        assert not [t for t, s, _ in TRANSITIONS if s == state]
