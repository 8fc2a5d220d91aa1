"""`/api/v1/push-devices`: the calling admin's phones for push notifications (core.push_devices).

Any signed-in admin manages their own phones, and only their own: the staff app registers its
FCM registration token after sign-in (and again whenever FCM gives it a new one), lists, and
removes a phone at sign-out. Breach alerts reach these phones when AGENT_ALERT_RECIPIENTS names
`devices` and the admin may read agents.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import push_devices
from core.errors import NotFound
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import PG_POOL, PRINCIPAL_KEY

routes = ApiRoutes(tag="push-devices")


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=push_devices.MAX_TOKEN_CHARS)
    platform: Literal["android", "ios", "web"]
    label: str = Field(default="", max_length=push_devices.MAX_LABEL_CHARS)
    # The phone's language for its alerts; null: the deployment's AGENT_ALERT_LANGUAGE.
    language: Literal["en", "sw", "fr"] | None = None


class DeviceOut(BaseModel):
    id: int
    platform: str
    label: str
    language: str | None
    token_start: str
    enabled: bool
    disabled_reason: str | None
    created_at: str
    last_seen_at: str
    disabled_at: str | None


class DevicesOut(BaseModel):
    devices: list[DeviceOut]
    max_devices: int


@routes.post(
    "/api/v1/push-devices",
    body=DeviceIn,
    response=DeviceOut,
    status=201,
    summary="Register this admin's phone for push (201 new, 200 when the token was already "
    f"theirs: it is enabled again); beyond {push_devices.MAX_DEVICES} phones the one "
    "registered longest ago is removed",
)
async def register_device(request: web.Request, body: DeviceIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    device, new = await push_devices.register(
        request.app[PG_POOL],
        admin_id=principal.user_id,
        actor=principal.username,
        token=body.token,
        platform=body.platform,
        label=body.label,
        language=body.language,
    )
    return json_response(device.as_json(), status=201 if new else 200)


@routes.get(
    "/api/v1/push-devices",
    response=DevicesOut,
    summary="This admin's phones: enabled first, then those FCM reported gone, with why",
)
async def list_devices(request: web.Request) -> web.StreamResponse:
    devices = await push_devices.list_devices(request.app[PG_POOL], request[PRINCIPAL_KEY].user_id)
    return json_response(
        {"devices": [d.as_json() for d in devices], "max_devices": push_devices.MAX_DEVICES}
    )


@routes.delete(
    "/api/v1/push-devices/{id}",
    status=204,
    summary="Remove one of this admin's phones (404 for any other id)",
)
async def remove_device(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    device_id = whole_number(raw)
    if device_id is None:
        raise NotFound(f"No push device {raw[:32]!r}")
    principal = request[PRINCIPAL_KEY]
    await push_devices.remove(
        request.app[PG_POOL],
        admin_id=principal.user_id,
        actor=principal.username,
        device_id=device_id,
    )
    return web.Response(status=204)
