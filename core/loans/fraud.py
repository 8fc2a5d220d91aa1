"""Fraud and eligibility rules: pure functions over facts the caller has gathered.

Each rule looks at `ApplicationFacts` (and the product) and returns a `Refusal` or None. The
service gathers the facts in the application's transaction (under a per-MSISDN lock, so two
applications at once cannot both pass the in-flight rule), then `first_refusal` runs the rules
in the gate order the notes give (section 4): who may borrow at all, then velocity, then open
credit. A refusal's `code` is stable so every channel can word it in its own language; its
`message` is the English default; `core.loans.messages.reason` gives the text in the customer's
language from the code and `details`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.loans.products import Product

DEFAULT_MAX_APPLICATIONS_24H = 3


@dataclass(frozen=True, slots=True)
class ApplicationFacts:
    """What the service knows about the applicant when the application arrives."""

    msisdn: str
    tier: str
    account_age_days: int
    applications_in_flight: int  # applied, or approved and not yet disbursed
    applications_last_24h: int  # made before this one, any outcome
    open_loans: int  # disbursed, active, overdue or defaulted


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    # The figures a translated text needs (core.loans.messages.reason), e.g. `wait_days`.
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FraudLimits:
    max_applications_24h: int = DEFAULT_MAX_APPLICATIONS_24H


Rule = Callable[[ApplicationFacts, Product, FraudLimits], Refusal | None]


def tier_not_allowed(facts: ApplicationFacts, product: Product, _: FraudLimits) -> Refusal | None:
    if facts.tier.lower() in product.tiers:
        return None
    return Refusal("TIER_NOT_ALLOWED", "This loan is not available for your account level")


def account_too_new(facts: ApplicationFacts, product: Product, _: FraudLimits) -> Refusal | None:
    if facts.account_age_days >= product.min_account_age_days:
        return None
    wait = product.min_account_age_days - facts.account_age_days
    return Refusal(
        "ACCOUNT_TOO_NEW", f"Your account is too new; try again in {wait} days", {"wait_days": wait}
    )


def too_many_applications(
    facts: ApplicationFacts, _: Product, limits: FraudLimits
) -> Refusal | None:
    # "More than N in 24 h": the N earlier ones plus this one would make N + 1.
    if facts.applications_last_24h < limits.max_applications_24h:
        return None
    return Refusal("TOO_MANY_APPLICATIONS", "Too many loan applications today; try tomorrow")


def application_in_flight(facts: ApplicationFacts, _: Product, __: FraudLimits) -> Refusal | None:
    if facts.applications_in_flight == 0:
        return None
    return Refusal("APPLICATION_IN_FLIGHT", "You already have a loan application in progress")


def loan_outstanding(facts: ApplicationFacts, _: Product, __: FraudLimits) -> Refusal | None:
    if facts.open_loans == 0:
        return None
    return Refusal("LOAN_OUTSTANDING", "You have a loan outstanding; repay it first")


RULES: tuple[Rule, ...] = (
    tier_not_allowed,
    account_too_new,
    too_many_applications,
    application_in_flight,
    loan_outstanding,
)


def first_refusal(facts: ApplicationFacts, product: Product, limits: FraudLimits) -> Refusal | None:
    for rule in RULES:
        refusal = rule(facts, product, limits)
        if refusal is not None:
            return refusal
    return None
