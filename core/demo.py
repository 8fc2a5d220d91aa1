"""Demo data for `make run` (GATEWAY_DEMO=1): the tariff bands, a few customers with money, an
agent with float and a permitted zone (a circle in central Nairobi, so the map has something to
show and the agent's device can transact inside it). Idempotent and safe when several instances
start at once (an advisory lock, fixed idempotency keys, registrations that tolerate "already
exists", a zone only for an agent without one). The demo numbers and PINs are listed in the
README only; nothing here logs a PIN."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from core import errors as E
from core.agents import register_agent
from core.crypto import FieldCipher
from core.customers import register_customer
from core.fees import seed_demo_tariffs
from core.geofences import agent_fence_ids, assign_fences, create_fence
from core.ledger import ensure_system_accounts
from core.pg import Db, connection
from core.transfers import deposit, float_topup

log = logging.getLogger("core.demo")
DEMO_LOCK = 7_384_102


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    msisdn: str
    first_name: str
    last_name: str
    national_id: str
    pin: str
    language: str
    balance_minor: int


DEMO_CUSTOMERS = (
    DemoCustomer("+254700000001", "Amina", "Njeri", "10000001", "2580", "en", 25_000_00),
    DemoCustomer("+254700000002", "Baraka", "Otieno", "10000002", "1357", "sw", 10_000_00),
    DemoCustomer("+254700000003", "Chloé", "Mwangi", "10000003", "8642", "fr", 5_000_00),
)
DEMO_AGENT = ("AGT001", "+254700000100", "Duka la Mama Njeri", "4826", 200_000_00)
# The demo agent's zone: 500 m around Kenyatta Avenue, Nairobi (GeoJSON: longitude first).
DEMO_GEOFENCE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [36.8219, -1.2864]},
    "properties": {"radius_m": 500, "name": "Demo: Duka la Mama Njeri, Nairobi CBD"},
}


async def _seed_zone(conn: Db, code: str) -> None:
    """The demo agent's zone, unless it has one (an admin may have changed it since)."""
    if await agent_fence_ids(conn, code):
        return
    stored = await create_fence(conn, DEMO_GEOFENCE)
    await assign_fences(conn, code, [stored.fence.id], None)


async def seed_demo(db: Db, cipher: FieldCipher, *, currency: str, pin_rounds: int) -> None:
    async with connection(db) as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", DEMO_LOCK)
        try:
            await _seed(conn, cipher, currency, pin_rounds)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", DEMO_LOCK)


async def _seed(conn: Db, cipher: FieldCipher, currency: str, pin_rounds: int) -> None:
    await ensure_system_accounts(conn, currency)
    if not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tariffs WHERE currency = $1)", currency
    ):
        await seed_demo_tariffs(conn, currency)
    for c in DEMO_CUSTOMERS:
        with contextlib.suppress(E.AlreadyExists):
            await register_customer(
                conn,
                cipher,
                msisdn=c.msisdn,
                first_name=c.first_name,
                last_name=c.last_name,
                national_id=c.national_id,
                pin=c.pin,
                language=c.language,
                channel="demo",
                pin_rounds=pin_rounds,
                currency=currency,
            )
        await deposit(
            conn,
            msisdn=c.msisdn,
            amount_minor=c.balance_minor,
            currency=currency,
            idempotency_key=f"demo-deposit-{c.msisdn}",
            channel="demo",
            reference="demo",
        )
    code, msisdn, name, pin, float_minor = DEMO_AGENT
    with contextlib.suppress(E.AlreadyExists):
        await register_agent(
            conn,
            code=code,
            msisdn=msisdn,
            name=name,
            pin=pin,
            pin_rounds=pin_rounds,
            actor="demo",
            currency=currency,
        )
    await float_topup(
        conn,
        agent_code=code,
        amount_minor=float_minor,
        currency=currency,
        idempotency_key=f"demo-float-{code}",
        channel="demo",
    )
    await _seed_zone(conn, code)
    log.info(
        "demo data ready",
        extra={"customers": [c.msisdn for c in DEMO_CUSTOMERS], "agent": code},
    )
