"""The catalogue of actions menus may call: names, inputs, outputs (with samples) and errors.

This is the contract the core bindings (`menus.bindings`) implement. Samples are deliberately
long (the longest plausible name, seven-digit amounts) because the validator renders every screen
with them to prove it fits on a handset. Amounts in outputs are display strings formatted by the
core (`KES 1,234.00`); amounts in inputs are integer minor units (`amount_minor`).

Error codes are the `error_code` of the core's typed errors.
"""

from __future__ import annotations

from types import MappingProxyType

from menus.actions import ActionSpec

MONEY = "KES 1,000,000.00"
NAME = "Wanjiku Nyambura"
REF = "TX8K2P4Q9ZAB"
PIN_ERRORS = ("WRONG_PIN", "WALLET_LOCKED")

_CUSTOMER_SAMPLE = {
    "registered": True,
    "first_name": "Wanjiku",
    "last_name": "Nyambura",
    "language": "en",
    "status": "active",
    "tier": "basic",
}

_SPECS = (
    ActionSpec(
        "customer.lookup",
        "Find the caller: registered or not, name, language, status",
        customer=_CUSTOMER_SAMPLE,
    ),
    ActionSpec(
        "register",
        "Register the caller with names, national ID and a PIN",
        reads=("first_name", "last_name"),
        secrets=("national_id", "pin"),
        outputs={"first_name": "Wanjiku"},
        customer=_CUSTOMER_SAMPLE,
        errors=("ALREADY_EXISTS", "VALIDATION_ERROR", "WEAK_PIN"),
    ),
    ActionSpec(
        "balance",
        "Verify the PIN and return the wallet balance",
        secrets=("pin",),
        outputs={"balance": MONEY},
        errors=PIN_ERRORS,
    ),
    ActionSpec(
        "send_money.quote",
        "Check the recipient and price a transfer (no money moves)",
        reads=("recipient", "amount_minor"),
        outputs={"amount": MONEY, "fee": "KES 105.00", "total": MONEY, "recipient_name": NAME},
        errors=(
            "CUSTOMER_NOT_FOUND",
            "SAME_ACCOUNT",
            "LIMIT_EXCEEDED",
            "INSUFFICIENT_FUNDS",
            "VALIDATION_ERROR",
        ),
    ),
    ActionSpec(
        "send_money",
        "Verify the PIN and send money; a receipt SMS goes to both parties",
        reads=("recipient", "amount_minor"),
        secrets=("pin",),
        outputs={
            "reference": REF,
            "amount": MONEY,
            "fee": "KES 105.00",
            "balance": MONEY,
            "recipient_name": NAME,
        },
        errors=(
            *PIN_ERRORS,
            "INSUFFICIENT_FUNDS",
            "LIMIT_EXCEEDED",
            "CUSTOMER_NOT_FOUND",
            "SAME_ACCOUNT",
            "VALIDATION_ERROR",
        ),
        money=True,
    ),
    ActionSpec(
        "statement",
        "Verify the PIN and return the latest transactions, one line each (with the param "
        "`older`: the ones before `statement_before`)",
        secrets=("pin",),
        outputs={
            "statement": [f"12/0{i} Sent {MONEY} to +254712345678" for i in range(1, 8)],
            "balance": MONEY,
            "statement_before": 1041,
            "statement_more": True,
        },
        errors=PIN_ERRORS,
    ),
    ActionSpec(
        "withdraw",
        "Verify the PIN and withdraw cash at an agent",
        reads=("agent", "amount_minor"),
        secrets=("pin",),
        outputs={
            "reference": REF,
            "amount": MONEY,
            "fee": "KES 105.00",
            "balance": MONEY,
            "agent_name": NAME,
        },
        errors=(
            *PIN_ERRORS,
            "INSUFFICIENT_FUNDS",
            "LIMIT_EXCEEDED",
            "AGENT_NOT_FOUND",
            "AGENT_UNAVAILABLE",
            "VALIDATION_ERROR",
            # core.agent_transactions.gate_customer_withdrawal: geofence.gating.Refusal codes
            "OUTSIDE_GEOFENCE",
            "LOCATION_UNCERTAIN",
            "NO_LOCATION",
            "STALE_LOCATION",
            "INACCURATE_LOCATION",
            "MOCK_LOCATION",
            "NO_GEOFENCE",
        ),
        money=True,
    ),
    ActionSpec(
        "pin.change",
        "Change the PIN: the old one, then the new one",
        secrets=("pin", "new_pin"),
        errors=(*PIN_ERRORS, "VALIDATION_ERROR", "WEAK_PIN"),
    ),
    ActionSpec(
        "language.set",
        "Set the caller's language (params.language)",
        outputs={"language": "sw"},
        errors=("VALIDATION_ERROR",),
    ),
    ActionSpec(
        "loans.products",
        "The loan products the caller may apply for",
        outputs={
            "loan_products": [{"code": "quick", "name": "Quick loan 30 days"}],
            "loan_products_count": 1,
            "loan_product": "quick",
            "loan_product_name": "Quick loan 30 days",
        },
    ),
    ActionSpec(
        "loans.quote",
        "Price a loan: fee, interest, total due and due date (nothing is applied)",
        reads=("loan_product", "amount_minor"),
        outputs={
            "product_name": "Quick loan 30 days",
            "amount": MONEY,
            "fee": "KES 1,050.00",
            "interest": "KES 50,000.00",
            "total_due": MONEY,
            "due_date": "31/12/2026",
        },
        errors=("LOAN_OUTSTANDING", "NOT_ELIGIBLE", "LIMIT_EXCEEDED", "VALIDATION_ERROR"),
    ),
    ActionSpec(
        "loans.apply",
        "Verify the PIN and apply; an approved loan is paid into the wallet",
        reads=("loan_product", "amount_minor"),
        secrets=("pin",),
        outputs={
            "reference": REF,
            "amount": MONEY,
            "total_due": MONEY,
            "due_date": "31/12/2026",
            "loan_status": "approved",
            "reason": "Your account is too new for this loan",
        },
        errors=(*PIN_ERRORS, "LOAN_OUTSTANDING", "NOT_ELIGIBLE", "LIMIT_EXCEEDED"),
        money=True,
    ),
    ActionSpec(
        "loans.status",
        "The open loan, if any: amount due and due date",
        outputs={"has_loan": True, "amount_due": MONEY, "due_date": "31/12/2026"},
    ),
    ActionSpec(
        "loans.repay",
        "Verify the PIN and repay the open loan",
        reads=("amount_minor",),
        secrets=("pin",),
        outputs={
            "reference": REF,
            "amount": MONEY,
            "amount_due": MONEY,
            "cleared": True,
            "balance": MONEY,
        },
        errors=(
            *PIN_ERRORS,
            "NO_OPEN_LOAN",
            "INSUFFICIENT_FUNDS",
            "OVERPAYMENT",
            "VALIDATION_ERROR",
        ),
        money=True,
    ),
)

CATALOGUE = MappingProxyType({spec.name: spec for spec in _SPECS})
