"""Allocating a repayment across a loan's installments.

The order is Fineract's `mifos-standard-strategy` ("Penalties, Fees, Interest, Principal order",
notes section 2): the oldest installment first, and within it penalties, then fees, then
interest, then principal. A payment that covers every overdue and due installment flows on into
the next ones in the same order (paying ahead). A payment larger than everything the loan still
owes is refused with `Overpayment` (its details carry the exact outstanding figure), so no money
is ever taken that the loan cannot absorb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from core.errors import Overpayment, ValidationFailed

COMPONENTS = ("penalty", "fee", "interest", "principal")


@dataclass(frozen=True, slots=True)
class InstallmentDue:
    """What one installment still owes, by component, in minor units."""

    number: int
    due_date: date
    penalty_minor: int = 0
    fee_minor: int = 0
    interest_minor: int = 0
    principal_minor: int = 0

    @property
    def total_minor(self) -> int:
        return self.penalty_minor + self.fee_minor + self.interest_minor + self.principal_minor

    def owed(self, component: str) -> int:
        value: int = getattr(self, f"{component}_minor")
        return value


@dataclass(frozen=True, slots=True)
class Portion:
    """The part of a payment that went to one installment."""

    number: int
    penalty_minor: int = 0
    fee_minor: int = 0
    interest_minor: int = 0
    principal_minor: int = 0

    @property
    def total_minor(self) -> int:
        return self.penalty_minor + self.fee_minor + self.interest_minor + self.principal_minor


@dataclass(frozen=True, slots=True)
class Allocation:
    amount_minor: int
    portions: tuple[Portion, ...]
    outstanding_before_minor: int

    def _sum(self, component: str) -> int:
        return sum(getattr(p, f"{component}_minor") for p in self.portions)

    @property
    def penalty_minor(self) -> int:
        return self._sum("penalty")

    @property
    def fee_minor(self) -> int:
        return self._sum("fee")

    @property
    def interest_minor(self) -> int:
        return self._sum("interest")

    @property
    def principal_minor(self) -> int:
        return self._sum("principal")

    @property
    def outstanding_after_minor(self) -> int:
        return self.outstanding_before_minor - self.amount_minor


def outstanding_minor(dues: Sequence[InstallmentDue]) -> int:
    return sum(d.total_minor for d in dues)


def allocate(amount_minor: int, dues: Sequence[InstallmentDue]) -> Allocation:
    """Split `amount_minor` over `dues`; raises ValidationFailed or Overpayment."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValidationFailed("The amount must be a positive whole number of minor units")
    owed = outstanding_minor(dues)
    if amount_minor > owed:
        raise Overpayment(
            f"The loan owes {owed} minor units; pay at most that",
            outstanding_minor=owed,
        )
    left = amount_minor
    portions: list[Portion] = []
    for due in sorted(dues, key=lambda d: (d.due_date, d.number)):
        if left == 0:
            break
        taken: dict[str, int] = {}
        for component in COMPONENTS:
            part = min(left, due.owed(component))
            taken[f"{component}_minor"] = part
            left -= part
        portion = Portion(due.number, **taken)
        if portion.total_minor:
            portions.append(portion)
    assert left == 0
    return Allocation(amount_minor, tuple(portions), owed)


def apply_allocation(
    dues: Sequence[InstallmentDue], allocation: Allocation
) -> list[InstallmentDue]:
    """What each installment owes after the allocation."""
    by_number = {p.number: p for p in allocation.portions}
    out = []
    for due in dues:
        paid = by_number.get(due.number)
        if paid is None:
            out.append(due)
            continue
        out.append(
            InstallmentDue(
                due.number,
                due.due_date,
                due.penalty_minor - paid.penalty_minor,
                due.fee_minor - paid.fee_minor,
                due.interest_minor - paid.interest_minor,
                due.principal_minor - paid.principal_minor,
            )
        )
    return out


def due_by(dues: Sequence[InstallmentDue], day: date) -> int:
    """What has fallen due on or before `day` and is still unpaid (arrears plus today's)."""
    return sum(d.total_minor for d in dues if d.due_date <= day)
