"""Admin HTTP API, one module per resource. `ROUTE_GROUPS` lists every group the app mounts."""

from __future__ import annotations

from gateway.admin import auth, sms, system
from gateway.api import ApiRoutes

ROUTE_GROUPS: list[ApiRoutes] = [auth.routes, system.routes, sms.routes]
