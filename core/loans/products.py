"""Loan products: the terms an admin defines once and every application is priced from.

The parameters follow Apache Fineract's loan product (see /work/shared/notes/ledger-and-loans.md
section 2): principal bounds, an interest rate *per repayment period*, the interest method
(flat or declining balance), the amortisation (equal installments or equal principal), the number
of repayments and their frequency, grace periods on principal and on interest payment, the
installment rounding multiple (Fineract's `installmentAmountInMultiplesOf`), a facility fee, a
late penalty, and who may borrow (KYC tiers, minimum account age, the auto-approval limit).

`validate_product` is the one place these rules live; the admin API and the store both call it.
A loan keeps a snapshot of its product's terms (`Product.terms()`), so editing or retiring a
product never changes a loan already made.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from core.errors import ValidationFailed

CODE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,31}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
TIER_RE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
NAME_MAX = 64
MAX_PRINCIPAL_MINOR = 10**13  # far above any tier's balance cap; keeps sums inside BIGINT
MAX_REPAYMENTS = 120
MAX_REPAYMENT_EVERY = 365
MAX_RATE_PERCENT = Decimal(100)  # per period; a product above 100 % per period is a typo
RATE_DECIMALS = 4
MAX_FEE_PERCENT = Decimal(50)
MAX_ACCOUNT_AGE_DAYS = 3650
MAX_PENALTY_GRACE_DAYS = 365
MAX_DEFAULT_AFTER_DAYS = 3650
MAX_TIERS = 16

E = TypeVar("E", bound=StrEnum)


class InterestMethod(StrEnum):
    FLAT = "flat"
    DECLINING_BALANCE = "declining_balance"


class Amortization(StrEnum):
    EQUAL_INSTALLMENTS = "equal_installments"
    EQUAL_PRINCIPAL = "equal_principal"


class Frequency(StrEnum):
    DAYS = "days"
    WEEKS = "weeks"
    MONTHS = "months"


@dataclass(frozen=True, slots=True)
class Product:
    """A loan product. Amounts are integer minor units; rates are Decimal percent."""

    code: str
    name: str
    currency: str
    principal_min_minor: int
    principal_max_minor: int
    interest_rate_percent: Decimal  # per repayment period
    interest_method: InterestMethod
    amortization: Amortization
    repayments: int
    frequency: Frequency
    min_account_age_days: int
    auto_approve_max_minor: int
    tiers: tuple[str, ...]
    repayment_every: int = 1  # a period is `repayment_every` x `frequency`
    grace_principal_periods: int = 0
    grace_interest_periods: int = 0
    installment_multiple_minor: int = 1
    facility_fee_percent: Decimal = Decimal(0)  # of the principal, due with installment 1
    facility_fee_flat_minor: int = 0
    late_penalty_percent: Decimal = Decimal(0)  # of an installment's overdue amount, once
    late_penalty_flat_minor: int = 0
    penalty_grace_days: int = 0  # days past due before the late penalty is charged
    default_after_days: int = 90  # days past due before an overdue loan counts as defaulted
    active: bool = True
    id: int | None = field(default=None, compare=False)

    def terms(self) -> dict[str, Any]:
        """A JSON-ready snapshot (Decimals as strings) stored with each loan."""
        out = asdict(self)
        out.pop("id")
        for key, value in out.items():
            if isinstance(value, Decimal):
                out[key] = str(value)
            elif isinstance(value, StrEnum):
                out[key] = value.value
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_terms(cls, terms: dict[str, Any], product_id: int | None = None) -> Product:
        return validate_product(dict(terms), product_id=product_id)


def _fail(field_name: str, problem: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field_name}: {problem}", errors=[{"field": field_name, "problem": problem}]
    )


def _int(data: dict[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "must be an integer")
    if not lo <= value <= hi:
        raise _fail(name, f"must be between {lo} and {hi}")
    return value


def _decimal(data: dict[str, Any], name: str, hi: Decimal, default: str = "0") -> Decimal:
    raw = data.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int | str | Decimal | float):
        raise _fail(name, "must be a number")
    try:
        # str() first: a float 7.5 becomes Decimal('7.5'), not its binary expansion.
        value = Decimal(str(raw))
    except ArithmeticError:
        raise _fail(name, "must be a number") from None
    if not value.is_finite() or value < 0 or value > hi:
        raise _fail(name, f"must be between 0 and {hi}")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > RATE_DECIMALS:
        raise _fail(name, f"at most {RATE_DECIMALS} decimal places")
    return value.normalize() if value != 0 else Decimal(0)


def _choice(data: dict[str, Any], name: str, enum: type[E]) -> E:
    raw = data.get(name)
    for member in enum:
        if raw == member.value:
            return member
    allowed = ", ".join(e.value for e in enum)
    raise _fail(name, f"must be one of {allowed}")


def _text(data: dict[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str:
    raw = data.get(name)
    if not isinstance(raw, str) or not pattern.match(raw):
        raise _fail(name, what)
    return raw


def _tiers(data: dict[str, Any]) -> tuple[str, ...]:
    raw = data.get("tiers")
    if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_TIERS:
        raise _fail("tiers", f"a list of 1 to {MAX_TIERS} tier names")
    tiers = []
    for item in raw:
        if not isinstance(item, str) or not TIER_RE.match(item.lower()):
            raise _fail("tiers", "tier names are lowercase words like basic or standard")
        tiers.append(item.lower())
    return tuple(sorted(set(tiers)))


def _name(data: dict[str, Any]) -> str:
    raw = data.get("name")
    if not isinstance(raw, str) or not raw.strip() or len(raw.strip()) > NAME_MAX:
        raise _fail("name", f"1 to {NAME_MAX} characters")
    if any(ord(ch) < 32 for ch in raw):
        raise _fail("name", "no control characters")
    return raw.strip()


def validate_product(data: dict[str, Any], product_id: int | None = None) -> Product:
    """Build a Product from loose input, or raise ValidationFailed naming the field."""
    pmin = _int(data, "principal_min_minor", 1, MAX_PRINCIPAL_MINOR)
    pmax = _int(data, "principal_max_minor", 1, MAX_PRINCIPAL_MINOR)
    if pmax < pmin:
        raise _fail("principal_max_minor", "must not be below principal_min_minor")
    repayments = _int(data, "repayments", 1, MAX_REPAYMENTS)
    grace_p = _int(data, "grace_principal_periods", 0, repayments - 1, 0)
    grace_i = _int(data, "grace_interest_periods", 0, repayments - 1, 0)
    if grace_i > grace_p:
        # Interest carried past the first principal installment would make the equal
        # installments unequal; Fineract's examples keep interest grace within principal grace.
        raise _fail("grace_interest_periods", "must not exceed grace_principal_periods")
    auto_max = _int(data, "auto_approve_max_minor", 0, MAX_PRINCIPAL_MINOR)
    active = data.get("active", True)
    if not isinstance(active, bool):
        raise _fail("active", "must be true or false")
    return Product(
        code=_text(data, "code", CODE_RE, "2-32 characters of A-Z, 0-9, _ or -"),
        name=_name(data),
        currency=_text(data, "currency", CURRENCY_RE, "a three-letter ISO code like KES"),
        principal_min_minor=pmin,
        principal_max_minor=pmax,
        interest_rate_percent=_decimal(data, "interest_rate_percent", MAX_RATE_PERCENT),
        interest_method=_choice(data, "interest_method", InterestMethod),
        amortization=_choice(data, "amortization", Amortization),
        repayments=repayments,
        frequency=_choice(data, "frequency", Frequency),
        min_account_age_days=_int(data, "min_account_age_days", 0, MAX_ACCOUNT_AGE_DAYS),
        auto_approve_max_minor=auto_max,
        tiers=_tiers(data),
        repayment_every=_int(data, "repayment_every", 1, MAX_REPAYMENT_EVERY, 1),
        grace_principal_periods=grace_p,
        grace_interest_periods=grace_i,
        installment_multiple_minor=_int(data, "installment_multiple_minor", 1, 100_000, 1),
        facility_fee_percent=_decimal(data, "facility_fee_percent", MAX_FEE_PERCENT),
        facility_fee_flat_minor=_int(data, "facility_fee_flat_minor", 0, MAX_PRINCIPAL_MINOR, 0),
        late_penalty_percent=_decimal(data, "late_penalty_percent", MAX_FEE_PERCENT),
        late_penalty_flat_minor=_int(data, "late_penalty_flat_minor", 0, MAX_PRINCIPAL_MINOR, 0),
        penalty_grace_days=_int(data, "penalty_grace_days", 0, MAX_PENALTY_GRACE_DAYS, 0),
        default_after_days=_int(data, "default_after_days", 1, MAX_DEFAULT_AFTER_DAYS, 90),
        active=active,
        id=product_id,
    )
