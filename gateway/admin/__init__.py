"""Admin HTTP API, one module per resource. `ROUTE_GROUPS` lists every group the app mounts."""

from __future__ import annotations

from gateway.admin import agents, auth, system
from gateway.api import ApiRoutes

ROUTE_GROUPS: list[ApiRoutes] = [auth.routes, system.routes, agents.routes]
