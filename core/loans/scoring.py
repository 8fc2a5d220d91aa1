"""Credit scoring: a score from 0 to 1000 and the limit it allows, behind one interface.

`Scorer` is the interface the service calls; it is async so an external bureau or model behind
the network can implement it (the service bounds it with a timeout and sends the application to
manual review if it fails: a scorer outage never auto-approves). `InternalScorer` is the
built-in model, a weighted sum of three components, each 0-1000:

- wallet: activity (transactions in 90 days) and money flowing in (90-day inflows measured
  against the product's maximum principal);
- tenure: account age, full marks at `tenure_full_days` (M-Shwari asks for 6 months, notes
  section 4);
- repayment: past loans repaid on time (late repayments count half); no history is neutral
  (500), and any default or write-off caps the component at `DEFAULT_CAP`.

Weights are configuration (`LOAN_SCORE_WEIGHTS`, e.g. `wallet=0.4,tenure=0.3,repayment=0.3`).
The limit is the smaller of the product maximum and a share of 90-day inflows (repayment capacity,
notes section 4), scaled by the score and rounded down to a whole `LIMIT_STEP_MINOR`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Protocol

from core.errors import ValidationFailed
from core.loans.products import Product

SCORE_MAX = 1000
NEUTRAL = 500
DEFAULT_CAP = 200
LIMIT_STEP_MINOR = 100
ACTIVITY_FULL_COUNT = 20
INFLOW_FULL_MULTIPLE = 3  # inflows of 3x the product maximum in 90 days earn full marks
TENURE_FULL_DAYS = 180
INFLOW_LIMIT_PERCENT = 50
COMPONENTS = ("wallet", "tenure", "repayment")


@dataclass(frozen=True, slots=True)
class ScoringFacts:
    msisdn: str
    account_age_days: int
    inflow_90d_minor: int
    outflow_90d_minor: int
    transactions_90d: int
    loans_repaid_on_time: int
    loans_repaid_late: int
    loans_defaulted: int  # defaulted or written off, ever


@dataclass(frozen=True, slots=True)
class Score:
    value: int  # 0..SCORE_MAX
    limit_minor: int
    components: dict[str, int] = field(default_factory=dict)
    source: str = "internal"


class Scorer(Protocol):
    """Anything that can score an applicant: the internal model or an external service."""

    @property
    def name(self) -> str: ...

    async def score(self, facts: ScoringFacts, product: Product) -> Score: ...


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    wallet: Decimal = Decimal("0.4")
    tenure: Decimal = Decimal("0.3")
    repayment: Decimal = Decimal("0.3")

    def __post_init__(self) -> None:
        values = (self.wallet, self.tenure, self.repayment)
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise ValidationFailed("Score weights must be non-negative and not all zero")

    @classmethod
    def parse(cls, text: str) -> ScoreWeights:
        """`wallet=0.4,tenure=0.3,repayment=0.3` (any subset; missing ones are 0)."""
        parts: dict[str, Decimal] = {}
        for item in text.split(","):
            name, sep, raw = item.strip().partition("=")
            if not sep or name not in COMPONENTS or name in parts:
                raise ValidationFailed(f"Expected name=weight for {', '.join(COMPONENTS)}")
            try:
                parts[name] = Decimal(raw.strip())
            except ArithmeticError:
                raise ValidationFailed(f"{name}: the weight is not a number") from None
            if not parts[name].is_finite():
                raise ValidationFailed(f"{name}: the weight is not a number")
        return cls(**{n: parts.get(n, Decimal(0)) for n in COMPONENTS})


def _ratio(part: int, whole: int) -> Decimal:
    if whole <= 0:
        return Decimal(1)
    return min(Decimal(1), Decimal(max(part, 0)) / Decimal(whole))


def _points(ratio: Decimal) -> int:
    return int((ratio * SCORE_MAX).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class InternalScorer:
    weights: ScoreWeights = ScoreWeights()
    tenure_full_days: int = TENURE_FULL_DAYS
    inflow_limit_percent: int = INFLOW_LIMIT_PERCENT
    name: str = "internal"

    def components(self, facts: ScoringFacts, product: Product) -> dict[str, int]:
        activity = _ratio(facts.transactions_90d, ACTIVITY_FULL_COUNT)
        inflow = _ratio(facts.inflow_90d_minor, INFLOW_FULL_MULTIPLE * product.principal_max_minor)
        closed = facts.loans_repaid_on_time + facts.loans_repaid_late + facts.loans_defaulted
        if closed == 0:
            repayment = NEUTRAL
        else:
            good = Decimal(facts.loans_repaid_on_time) + Decimal(facts.loans_repaid_late) / 2
            repayment = _points(good / closed)
            if facts.loans_defaulted:
                repayment = min(repayment, DEFAULT_CAP)
        return {
            "wallet": _points((activity + inflow) / 2),
            "tenure": _points(_ratio(facts.account_age_days, self.tenure_full_days)),
            "repayment": repayment,
        }

    def compute(self, facts: ScoringFacts, product: Product) -> Score:
        parts = self.components(facts, product)
        w = self.weights
        weighted = (
            w.wallet * parts["wallet"]
            + w.tenure * parts["tenure"]
            + w.repayment * parts["repayment"]
        ) / (w.wallet + w.tenure + w.repayment)
        value = int(weighted.to_integral_value(rounding=ROUND_FLOOR))
        capacity = Decimal(facts.inflow_90d_minor) * self.inflow_limit_percent / 100
        ceiling = min(Decimal(product.principal_max_minor), capacity)
        raw_limit = ceiling * value / SCORE_MAX
        limit = int(raw_limit / LIMIT_STEP_MINOR) * LIMIT_STEP_MINOR  # down to a whole unit
        return Score(value, max(limit, 0), parts, self.name)

    async def score(self, facts: ScoringFacts, product: Product) -> Score:
        return self.compute(facts, product)
