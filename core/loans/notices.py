"""The texts a loan sends (English; each under one 160-character SMS). Channels translate by
`kind`; the body is the default wording the notification intent carries."""

from __future__ import annotations

from datetime import date

from core.loans.text import format_minor

SMS_MAX = 160


def _fit(text: str) -> str:
    assert len(text) <= SMS_MAX, text  # templates are sized for one SMS; amounts are bounded
    return text


def disbursed(amount_minor: int, total_minor: int, due: date, currency: str) -> str:
    return _fit(
        f"Your loan of {format_minor(amount_minor, currency)} is in your wallet. "
        f"Repay {format_minor(total_minor, currency)}; first payment due {due.isoformat()}."
    )


def reminder(amount_minor: int, due: date, today: date, currency: str) -> str:
    amount = format_minor(amount_minor, currency)
    days = (due - today).days
    if days > 0:
        return _fit(f"Reminder: your loan payment of {amount} is due on {due.isoformat()}.")
    if days == 0:
        return _fit(f"Reminder: your loan payment of {amount} is due today.")
    return _fit(
        f"Your loan payment of {amount} was due on {due.isoformat()} ({-days} days ago). "
        "Please repay to avoid penalties."
    )


def penalty(amount_minor: int, currency: str) -> str:
    return _fit(
        f"A late payment penalty of {format_minor(amount_minor, currency)} was added to your loan."
    )


def received(amount_minor: int, outstanding_minor: int, currency: str) -> str:
    if outstanding_minor == 0:
        amount = format_minor(amount_minor, currency)
        return _fit(f"Received {amount}. Your loan is fully repaid. Thank you.")
    return _fit(
        f"Received {format_minor(amount_minor, currency)} for your loan. "
        f"Outstanding: {format_minor(outstanding_minor, currency)}."
    )


def decided(approved: bool, message: str) -> str:
    prefix = "Loan approved: " if approved else "Loan application: "
    return _fit(prefix + message[: SMS_MAX - len(prefix)])
