"""LOAN_* settings: defaults, parsing, and one clear line for each bad value."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings
from core.loans.scoring import ScoreWeights
from menus.loans.setup import loan_policy


def test_defaults() -> None:
    s = load_settings({})
    assert s.loan_max_applications_24h == 3
    assert ScoreWeights.parse(s.loan_score_weights) == ScoreWeights()
    assert (s.loan_score_approve_min, s.loan_score_review_min) == (600, 400)
    assert s.loan_reminder_days == (-3, 0, 1, 7)
    assert s.loan_jobs_interval_s == 900
    policy = loan_policy(s)
    assert policy.scorer_timeout_s == 3.0
    assert policy.fraud.max_applications_24h == 3


def test_values_are_parsed() -> None:
    s = load_settings(
        {
            "LOAN_MAX_APPLICATIONS_24H": "5",
            "LOAN_SCORE_WEIGHTS": "wallet=1, repayment=2",
            "LOAN_SCORE_APPROVE_MIN": "700",
            "LOAN_SCORE_REVIEW_MIN": "700",
            "LOAN_SCORER_TIMEOUT_MS": "250",
            "LOAN_REMINDER_DAYS": "7, -1, 0, 0",
            "LOAN_JOBS_INTERVAL_S": "0",
        }
    )
    assert s.loan_max_applications_24h == 5
    weights = ScoreWeights.parse(s.loan_score_weights)
    assert (weights.wallet, weights.tenure, weights.repayment) == (1, 0, 2)
    assert s.loan_reminder_days == (-1, 0, 7)
    assert loan_policy(s).scorer_timeout_s == 0.25
    assert s.loan_jobs_interval_s == 0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LOAN_MAX_APPLICATIONS_24H": "0"}, "LOAN_MAX_APPLICATIONS_24H"),
        ({"LOAN_SCORE_WEIGHTS": "wallet=0,tenure=0"}, "LOAN_SCORE_WEIGHTS"),
        ({"LOAN_SCORE_WEIGHTS": "wallet=1,wallet=2"}, "LOAN_SCORE_WEIGHTS"),
        ({"LOAN_SCORE_WEIGHTS": "luck=1"}, "LOAN_SCORE_WEIGHTS"),
        ({"LOAN_SCORE_WEIGHTS": "wallet=-1"}, "LOAN_SCORE_WEIGHTS"),
        ({"LOAN_SCORE_APPROVE_MIN": "1001"}, "LOAN_SCORE_APPROVE_MIN"),
        ({"LOAN_SCORE_REVIEW_MIN": "601"}, "LOAN_SCORE_REVIEW_MIN"),
        ({"LOAN_SCORER_TIMEOUT_MS": "10"}, "LOAN_SCORER_TIMEOUT_MS"),
        ({"LOAN_REMINDER_DAYS": "soon"}, "LOAN_REMINDER_DAYS"),
        ({"LOAN_REMINDER_DAYS": "400"}, "LOAN_REMINDER_DAYS"),
        ({"LOAN_JOBS_INTERVAL_S": "-1"}, "LOAN_JOBS_INTERVAL_S"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(variable) and "\n" not in message
