"""Money as customers read it in loan messages: `KES 1,234.00`.

The banking core's `core.money.format_amount` will be the one formatter once it is merged; this
stays a two-line shim with the same output so loan texts do not wait for it.
"""

from __future__ import annotations

MINOR_DIGITS = 2  # KES, GHS, NGN, TZS: every currency the gateway is configured for


def format_minor(amount_minor: int, currency: str) -> str:
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), 10**MINOR_DIGITS)
    return f"{sign}{currency} {major:,}.{minor:0{MINOR_DIGITS}d}"
