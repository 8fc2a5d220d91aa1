"""The decision on an application: approve now, send to a loan officer, or refuse with a reason.

    a fraud or eligibility rule refused        -> refuse (the rule's code)
    amount outside the product's bounds         -> refuse AMOUNT_OUT_OF_RANGE
    the scorer failed or timed out              -> review SCORER_UNAVAILABLE (never auto-approve)
    score below review_min_score                -> refuse LOW_SCORE
    amount above the score's limit              -> refuse OVER_LIMIT (details: the limit)
    score below approve_min_score               -> review REVIEW_SCORE
    amount above the product's auto-approve max -> review REVIEW_AMOUNT
    otherwise                                   -> approve APPROVED

Each outcome carries a stable `code` and an English `message` short enough for a USSD screen,
and the figures behind it in `details`; `core.loans.messages.reason(code, language, details)`
words it in the customer's language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.errors import ValidationFailed
from core.loans.fraud import Refusal
from core.loans.products import Product
from core.loans.scoring import SCORE_MAX, Score
from core.loans.text import format_minor

DEFAULT_APPROVE_MIN_SCORE = 600
DEFAULT_REVIEW_MIN_SCORE = 400


class Outcome(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    code: str
    message: str
    limit_minor: int | None = None
    # Figures for the translated text (currency, bounds); not stored with the application.
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    approve_min_score: int = DEFAULT_APPROVE_MIN_SCORE
    review_min_score: int = DEFAULT_REVIEW_MIN_SCORE

    def __post_init__(self) -> None:
        if not 0 <= self.review_min_score <= self.approve_min_score <= SCORE_MAX:
            raise ValidationFailed(
                f"Need 0 <= review minimum <= approve minimum <= {SCORE_MAX} for loan scores"
            )


def decide(  # noqa: PLR0911 (one return per band, in the docstring's order)
    product: Product,
    amount_minor: int,
    refusal: Refusal | None,
    score: Score | None,
    policy: DecisionPolicy,
) -> Decision:
    if refusal is not None:
        return Decision(Outcome.REFUSE, refusal.code, refusal.message, details=refusal.details)
    if not product.principal_min_minor <= amount_minor <= product.principal_max_minor:
        low = format_minor(product.principal_min_minor, product.currency)
        high = format_minor(product.principal_max_minor, product.currency)
        bounds = {
            "min_minor": product.principal_min_minor,
            "max_minor": product.principal_max_minor,
            "currency": product.currency,
        }
        return Decision(
            Outcome.REFUSE,
            "AMOUNT_OUT_OF_RANGE",
            f"Borrow between {low} and {high}",
            details=bounds,
        )
    if score is None:
        return Decision(
            Outcome.REVIEW, "SCORER_UNAVAILABLE", "Your application will be reviewed shortly"
        )
    if score.value < policy.review_min_score:
        return Decision(Outcome.REFUSE, "LOW_SCORE", "You do not qualify for a loan yet", 0)
    if amount_minor > score.limit_minor:
        limit = format_minor(score.limit_minor, product.currency)
        return Decision(
            Outcome.REFUSE,
            "OVER_LIMIT",
            f"Your loan limit is {limit}",
            score.limit_minor,
            {"currency": product.currency},
        )
    if score.value < policy.approve_min_score:
        return Decision(
            Outcome.REVIEW, "REVIEW_SCORE", "Your application will be reviewed", score.limit_minor
        )
    if amount_minor > product.auto_approve_max_minor:
        return Decision(
            Outcome.REVIEW, "REVIEW_AMOUNT", "Your application will be reviewed", score.limit_minor
        )
    return Decision(Outcome.APPROVE, "APPROVED", "Your loan is approved", score.limit_minor)
