"""Admins' phones for push notifications (table from migration 0775).

An admin's staff app registers its FCM registration token; the admin sees their phones, with
when each was last registered and why one stopped (FCM said the token is gone), and removes
one. Breach alerts sent to `devices` (AGENT_ALERT_RECIPIENTS) reach the enabled phones of the
active admins who may read agents (`alert_tokens`). A token FCM reports gone is disabled
(`disable_token`) and not sent to again; the app registering it again (apps refresh tokens)
enables it.

An admin keeps at most MAX_DEVICES enabled phones: registering one more removes the one
registered longest ago (a replaced phone nobody removed), so a registration never fails for
the count. Registering, moving and removing are audited: a phone that receives alerts receives
agents' positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core.audit import record
from core.errors import NotFound, ValidationFailed
from core.pg import Db, connection

MAX_DEVICES = 10
MAX_TOKEN_CHARS = 4096
MAX_LABEL_CHARS = 64
PLATFORMS = ("android", "ios", "web")
ALERT_PERMISSION = "agents:read"
# A registration token: printable ASCII without spaces (as channels.push checks a recipient).
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class PushDevice:
    id: int
    admin_id: int
    token: str
    platform: str
    label: str
    created_at: datetime
    last_seen_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None

    def as_json(self) -> dict[str, Any]:
        """What the admin sees: the token's start only (it is the phone's address for
        notifications; the app that registered it knows it whole)."""
        return {
            "id": self.id,
            "platform": self.platform,
            "label": self.label,
            "token_start": self.token[:12],
            "enabled": self.disabled_at is None,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "disabled_at": None if self.disabled_at is None else self.disabled_at.isoformat(),
        }


def _device(row: asyncpg.Record) -> PushDevice:
    return PushDevice(
        id=row["id"],
        admin_id=row["admin_id"],
        token=row["token"],
        platform=row["platform"],
        label=row["label"],
        created_at=row["created_at"],
        last_seen_at=row["last_seen_at"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
    )


def check_token(token: str) -> str:
    if not 1 <= len(token) <= MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise ValidationFailed(
            f"token: an FCM registration token (printable, no spaces, 1-{MAX_TOKEN_CHARS} "
            "characters)",
            field="token",
        )
    return token


# Upserted by token: the same installation registering again (apps refresh their token, and
# register at every sign-in) updates its row and enables it; another admin's registration
# moves it to them.
_REGISTER = """
WITH old AS (SELECT admin_id FROM admin_push_devices WHERE token = $2)
INSERT INTO admin_push_devices AS d (admin_id, token, platform, label)
VALUES ($1, $2, $3, $4)
ON CONFLICT (token) DO UPDATE
    SET admin_id = EXCLUDED.admin_id, platform = EXCLUDED.platform, label = EXCLUDED.label,
        last_seen_at = now(), disabled_at = NULL, disabled_reason = NULL
RETURNING id, admin_id, token, platform, label, created_at, last_seen_at, disabled_at,
          disabled_reason, (SELECT admin_id FROM old) AS previous_admin
"""

# Beyond MAX_DEVICES enabled phones, the ones registered longest ago go; so do disabled ones
# beyond as many (a token FCM reported gone is kept a while to show why, not for ever).
_TRIM = """
DELETE FROM admin_push_devices
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY disabled_at IS NULL ORDER BY last_seen_at DESC, id DESC
        ) AS n
        FROM admin_push_devices WHERE admin_id = $1
    ) AS ranked
    WHERE n > $2
)
RETURNING id, disabled_at IS NULL AS enabled
"""


async def register(
    db: Db, *, admin_id: int, actor: str, token: str, platform: str, label: str = ""
) -> tuple[PushDevice, bool]:
    """(the device, whether it is new to this admin)."""
    check_token(token)
    if platform not in PLATFORMS:
        raise ValidationFailed(f"platform: one of {', '.join(PLATFORMS)}", field="platform")
    if len(label) > MAX_LABEL_CHARS:
        raise ValidationFailed(f"label: at most {MAX_LABEL_CHARS} characters", field="label")
    async with connection(db) as conn, conn.transaction():
        # One admin's registrations in turn: two at once could each leave MAX_DEVICES others.
        await conn.execute("SELECT 1 FROM admin_users WHERE id = $1 FOR UPDATE", admin_id)
        row = await conn.fetchrow(_REGISTER, admin_id, token, platform, label)
        assert row is not None
        previous = row["previous_admin"]
        device = _device(row)
        removed = await conn.fetch(_TRIM, admin_id, MAX_DEVICES)
        new = previous != admin_id
        if new:
            details: dict[str, Any] = {"platform": platform, "label": label}
            if previous is not None:
                details["from_admin_id"] = previous
            await record(
                conn,
                actor_type="admin",
                actor=actor,
                action="push_device.registered",
                target=str(device.id),
                details=details,
            )
        for gone in removed:
            await record(
                conn,
                actor_type="admin",
                actor=actor,
                action="push_device.replaced",
                target=str(gone["id"]),
                details={
                    "reason": f"more than {MAX_DEVICES} {'' if gone['enabled'] else 'disabled '}"
                    "phones"
                },
            )
    return device, new


async def list_devices(db: Db, admin_id: int) -> list[PushDevice]:
    """The admin's phones, the enabled first, most recently registered first."""
    async with connection(db) as conn:
        rows = await conn.fetch(
            """
            SELECT id, admin_id, token, platform, label, created_at, last_seen_at, disabled_at,
                   disabled_reason
            FROM admin_push_devices WHERE admin_id = $1
            ORDER BY disabled_at IS NOT NULL, last_seen_at DESC, id DESC
            """,
            admin_id,
        )
    return [_device(r) for r in rows]


async def remove(db: Db, *, admin_id: int, actor: str, device_id: int) -> None:
    """NotFound for a device that is not this admin's (another's is not told apart)."""
    async with connection(db) as conn, conn.transaction():
        gone = await conn.fetchval(
            "DELETE FROM admin_push_devices WHERE id = $1 AND admin_id = $2 RETURNING id",
            device_id,
            admin_id,
        )
        if gone is None:
            raise NotFound(f"No push device {device_id}", id=device_id)
        await record(
            conn, actor_type="admin", actor=actor, action="push_device.removed", target=str(gone)
        )


async def disable_token(db: Db, token: str, reason: str) -> bool:
    """FCM says `token` is gone (or belongs to another sender): whether a device had it."""
    async with connection(db) as conn:
        changed = await conn.fetchval(
            "UPDATE admin_push_devices SET disabled_at = now(), disabled_reason = $2 "
            "WHERE token = $1 AND disabled_at IS NULL RETURNING id",
            token,
            reason[:200],
        )
    return changed is not None


async def alert_tokens(conn: asyncpg.Connection, permission: str = ALERT_PERMISSION) -> list[str]:
    """The enabled phones of the active admins holding `permission` (or a superuser role)."""
    rows = await conn.fetch(
        """
        SELECT d.token FROM admin_push_devices AS d
        JOIN admin_users AS u ON u.id = d.admin_id AND u.is_active
        WHERE d.disabled_at IS NULL AND EXISTS (
            SELECT 1 FROM admin_user_roles AS ur
            JOIN roles AS r ON r.id = ur.role_id
            LEFT JOIN role_permissions AS rp ON rp.role_id = r.id AND rp.permission_code = $1
            WHERE ur.user_id = u.id AND (r.is_superuser OR rp.permission_code IS NOT NULL)
        )
        ORDER BY d.id
        """,
        permission,
    )
    return [r["token"] for r in rows]
