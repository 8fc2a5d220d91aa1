"""Admin HTTP API, one module per resource. `ROUTE_GROUPS` lists every group the app mounts."""

from __future__ import annotations

from gateway.admin import (
    admins,
    agent_spool,
    agents,
    audit,
    auth,
    customers,
    geofences,
    kyc,
    menus,
    money,
    outbox,
    pricing,
    push_devices,
    roles,
    sms,
    system,
)
from gateway.admin import loans as loans_admin
from gateway.api import ApiRoutes

ROUTE_GROUPS: list[ApiRoutes] = [
    auth.routes,
    system.routes,
    customers.routes,
    kyc.routes,
    money.routes,
    agents.routes,
    geofences.routes,
    agent_spool.routes,
    loans_admin.routes,
    menus.routes,
    sms.routes,
    outbox.routes,
    audit.routes,
    pricing.routes,
    push_devices.routes,
    admins.routes,
    roles.routes,
]
