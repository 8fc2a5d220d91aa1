"""Admin HTTP API, one module per resource. `ROUTE_GROUPS` lists every group the app mounts."""

from __future__ import annotations

from gateway.admin import agents, auth, customers, money, system
from gateway.api import ApiRoutes

ROUTE_GROUPS: list[ApiRoutes] = [auth.routes, system.routes]
ROUTE_GROUPS += [customers.routes, money.routes, agents.routes]
