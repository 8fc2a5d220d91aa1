"""Admin identity: users with bcrypt passwords and TOTP, roles, permissions, lockout.

Rules that live here (and not in the HTTP layer):
- a password is at least 10 characters with letters and digits; bcrypt runs off the event loop;
- the TOTP secret is 160 bits, stored encrypted; a code is accepted once (the last used time
  step is kept and a code from that step or an earlier one is refused);
- `max_failures` wrong logins in a row lock the account for `lockout_s`;
- role `admin` is a superuser and holds every permission.

`authenticate` returns the failure instead of raising it, because the failure count must be
committed even though the login fails: the caller commits, then raises.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bcrypt
import pyotp
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import FieldCipher
from core.errors import (
    AccountLocked,
    AlreadyExists,
    AuthFailed,
    CoreError,
    NotFound,
    OtpInvalid,
    ValidationFailed,
)
from core.models import (
    AdminResetToken,
    AdminUser,
    AdminUserRole,
    AuditLog,
    Permission,
    Role,
    RolePermission,
)

TOTP_ISSUER = "CodeForge Gateway"
TOTP_SECRET_CHARS = 32  # base32: 32 characters = 160 bits
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
PASSWORD_MIN = 10
PASSWORD_MAX = 128  # bcrypt reads 72 bytes; longer input is refused, not silently cut
BCRYPT_MAX_BYTES = 72
# Spent on unknown usernames so the response time does not reveal which usernames exist.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-real-password", bcrypt.gensalt(rounds=4))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an authenticated admin and what they may do."""

    user_id: int
    username: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    superuser: bool

    def may(self, permission: str) -> bool:
        return self.superuser or permission in self.permissions


@dataclass(frozen=True, slots=True)
class NewAdmin:
    user_id: int
    username: str
    provisioning_uri: str


def normalise_username(raw: str) -> str:
    username = raw.strip().lower()
    if not USERNAME_RE.match(username):
        raise ValidationFailed(
            "A username is 3-64 characters: letters, digits, dot, dash or underscore",
            field="username",
        )
    return username


def check_password_policy(password: str) -> None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValidationFailed(
            f"A password is {PASSWORD_MIN} to {PASSWORD_MAX} characters", field="password"
        )
    if len(password.encode()) > BCRYPT_MAX_BYTES:
        raise ValidationFailed("A password is at most 72 bytes", field="password")
    if not (re.search(r"[A-Za-z]", password) and re.search(r"\d", password)):
        raise ValidationFailed("A password needs letters and digits", field="password")


async def hash_secret(secret: str, rounds: int) -> str:
    salt = bcrypt.gensalt(rounds=rounds)
    hashed = await asyncio.to_thread(bcrypt.hashpw, secret.encode(), salt)
    return hashed.decode()


async def verify_secret(secret: str, hashed: str | None) -> bool:
    """bcrypt off the event loop. A secret past bcrypt's 72 bytes matches nothing (no stored
    password is that long: `check_password_policy` refuses it) but still spends one check, so its
    answer takes as long as any other; bcrypt 5 raises ValueError for it (a 500 at login)."""
    raw = secret.encode()
    fits = len(raw) <= BCRYPT_MAX_BYTES
    target = hashed.encode() if hashed else _DUMMY_HASH
    ok = await asyncio.to_thread(bcrypt.checkpw, raw if fits else b"-", target)
    return ok and fits and hashed is not None


async def create_admin(
    db: AsyncSession,
    cipher: FieldCipher,
    *,
    username: str,
    password: str,
    role: str = "admin",
    password_rounds: int = 12,
    actor_type: str = "system",
    actor: str = "cli",
) -> NewAdmin:
    """Create an admin with one role; returns the TOTP provisioning URI to show once. The
    audit names who: the CLI (the default), or the admin who called the API."""
    username = normalise_username(username)
    check_password_policy(password)
    role_row = (await db.execute(select(Role).where(Role.name == role))).scalar_one_or_none()
    if role_row is None:
        names = (await db.execute(select(Role.name).order_by(Role.name))).scalars().all()
        raise NotFound(f"No role {role!r}; roles are: {', '.join(names)}", field="role")
    secret = pyotp.random_base32(TOTP_SECRET_CHARS)
    user = AdminUser(
        username=username,
        password_hash=await hash_secret(password, password_rounds),
        totp_secret_enc=cipher.encrypt(secret),
    )
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:
        raise AlreadyExists(f"An admin named {username!r} already exists") from None
    db.add(AdminUserRole(user_id=user.id, role_id=role_row.id))
    db.add(
        AuditLog(
            actor_type=actor_type,
            actor=actor,
            action="admin.create",
            target=username,
            details={"role": role},
        )
    )
    uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)
    return NewAdmin(user_id=user.id, username=username, provisioning_uri=uri)


async def load_principal(db: AsyncSession, user_id: int) -> Principal:
    user = await db.get(AdminUser, user_id)
    if user is None or not user.is_active:
        raise NotFound("No such admin")
    rows = (
        await db.execute(
            select(Role.name, Role.is_superuser, RolePermission.permission_code)
            .join(AdminUserRole, AdminUserRole.role_id == Role.id)
            .outerjoin(RolePermission, RolePermission.role_id == Role.id)
            .where(AdminUserRole.user_id == user_id)
        )
    ).all()
    roles = tuple(sorted({r.name for r in rows}))
    perms = frozenset(r.permission_code for r in rows if r.permission_code)
    superuser = any(r.is_superuser for r in rows)
    if superuser:
        perms = frozenset((await db.execute(select(Permission.code))).scalars().all())
    return Principal(user.id, user.username, roles, perms, superuser)


def matching_step(secret: str, otp: str, now: datetime) -> int | None:
    """The TOTP time step `otp` belongs to, allowing one step of clock drift either way."""
    if not re.fullmatch(r"\d{6}", otp):
        return None
    totp = pyotp.TOTP(secret)
    step_now = int(now.timestamp()) // totp.interval
    for step in (step_now, step_now - 1, step_now + 1):
        if pyotp.utils.strings_equal(totp.generate_otp(step), otp):
            return step
    return None


async def record_failure(
    db: AsyncSession,
    user: AdminUser,
    now: datetime,
    max_failures: int,
    lockout_s: int,
    *,
    action: str = "auth.login_failed",
) -> CoreError:
    """Count a wrong password or code toward the lockout (and audit it as `action`); the
    error to answer with, for the caller to raise after committing."""
    failures = user.failed_logins + 1
    locked_until = now + timedelta(seconds=lockout_s) if failures >= max_failures else None
    await db.execute(
        update(AdminUser)
        .where(AdminUser.id == user.id)
        .values(
            failed_logins=0 if locked_until else failures,
            locked_until=locked_until,
            updated_at=now,
        )
    )
    db.add(
        AuditLog(
            actor_type="admin",
            actor=user.username,
            action=action,
            details={"failures": failures, "locked": locked_until is not None},
        )
    )
    if locked_until is not None:
        return AccountLocked(
            "Too many failed logins; the account is locked", retry_after_s=lockout_s
        )
    return AuthFailed()


async def _reset_pending(db: AsyncSession, admin_id: int) -> bool:
    """An issued reset token not used nor revoked (expired included)."""
    found = await db.execute(
        select(AdminResetToken.id)
        .where(
            AdminResetToken.admin_id == admin_id,
            AdminResetToken.used_at.is_(None),
            AdminResetToken.revoked_at.is_(None),
        )
        .limit(1)
    )
    return found.first() is not None


async def authenticate(
    db: AsyncSession,
    cipher: FieldCipher,
    *,
    username: str,
    password: str,
    otp: str,
    now: datetime | None = None,
    max_failures: int = 5,
    lockout_s: int = 900,
) -> Principal | CoreError:
    """Check password and TOTP; returns the Principal, or the error after recording it."""
    now = now or datetime.now(UTC)
    name = username.strip().lower()
    user = (
        await db.execute(select(AdminUser).where(AdminUser.username == name).with_for_update())
    ).scalar_one_or_none()
    password_ok = await verify_secret(password, user.password_hash if user else None)
    if user is None or not user.is_active:
        return AuthFailed()
    if user.locked_until is not None and user.locked_until > now:
        retry = int((user.locked_until - now).total_seconds()) + 1
        return AccountLocked("The account is locked; try again later", retry_after_s=retry)
    if not password_ok:
        return await record_failure(db, user, now, max_failures, lockout_s)
    step = matching_step(cipher.decrypt(user.totp_secret_enc), otp, now)
    if step is None or step <= user.totp_last_step:
        error = await record_failure(db, user, now, max_failures, lockout_s)
        return error if isinstance(error, AccountLocked) else OtpInvalid()
    if await _reset_pending(db, user.id):
        # A manager issued a credentials reset (core.credentials): the old password and phone
        # stay shut out until the token is used (a stolen pair must not log straight back in
        # after the reset cut its sessions), even past the token's expiry (then a new reset).
        # Said only to whoever has both factors right, so it tells a stranger nothing.
        db.add(
            AuditLog(
                actor_type="admin",
                actor=user.username,
                action="auth.reset_pending",
                target=user.username,
            )
        )
        return AuthFailed(
            "A credentials reset is pending for this account; use the reset token",
            code="RESET_PENDING",
        )
    await db.execute(
        update(AdminUser)
        .where(AdminUser.id == user.id)
        .values(totp_last_step=step, failed_logins=0, locked_until=None, updated_at=now)
    )
    db.add(AuditLog(actor_type="admin", actor=user.username, action="auth.login"))
    return await load_principal(db, user.id)
