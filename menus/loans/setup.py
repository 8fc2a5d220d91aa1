"""Build the loan service from Settings (the composition root calls this), on the banking core
(its ledger, customers and outbox) unless a test passes other implementations."""

from __future__ import annotations

from config.settings import Settings
from core.clock import Clock
from core.loans.core_ledger import CoreCustomerDirectory, CoreLoanLedger, OutboxNotifier
from core.loans.decision import DecisionPolicy
from core.loans.fraud import FraudLimits
from core.loans.ports import CustomerDirectory, LoanLedger, Notifier
from core.loans.scoring import InternalScorer, ScoreWeights
from menus.loans.service import LoanPolicy, LoanService


def loan_policy(settings: Settings) -> LoanPolicy:
    return LoanPolicy(
        fraud=FraudLimits(max_applications_24h=settings.loan_max_applications_24h),
        decision=DecisionPolicy(
            approve_min_score=settings.loan_score_approve_min,
            review_min_score=settings.loan_score_review_min,
        ),
        scorer_timeout_s=settings.loan_scorer_timeout_ms / 1000,
    )


def build_loan_service(
    settings: Settings,
    clock: Clock,
    *,
    ledger: LoanLedger | None = None,
    customers: CustomerDirectory | None = None,
    notifier: Notifier | None = None,
) -> LoanService:
    return LoanService(
        clock=clock,
        policy=loan_policy(settings),
        scorer=InternalScorer(ScoreWeights.parse(settings.loan_score_weights)),
        ledger=ledger or CoreLoanLedger(),
        customers=customers or CoreCustomerDirectory(),
        notifier=notifier or OutboxNotifier(),
    )
