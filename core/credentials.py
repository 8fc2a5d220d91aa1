"""Admin credentials after creation: an admin changes their own password; a manager issues a
single-use reset token for another admin (who forgot the password or lost the phone), and that
admin uses it to set a new password and get a new TOTP secret.

Rules that live here (and not in the HTTP layer or the CLI):
- a change needs the current password and a fresh TOTP code, checked as a login checks them
  (core.identity): a code's time step is used once, a wrong password or code counts toward the
  login lockout, and a locked admin is refused;
- a new password follows the policy and is none of the admin's last PASSWORD_HISTORY passwords
  (the current one and the newest kept in `admin_password_history`); bcrypt runs off the loop;
- a reset token is 256 random bits, shown once; only its SHA-256 is stored. It expires, is used
  once, dies when another is issued for the same admin, when the admin is deactivated or when
  the manager who issued it is (core.admins.deactivate), and an
  unknown, used, revoked and expired token all get one and the same answer;
- completing a reset sets the password and a new TOTP secret (the old phone's codes stop
  working), clears the lockout and marks the token used, in one transaction: of two concurrent
  uses exactly one wins (both lock the admin's row first; the second then finds the token used);
- a manager cannot reset themselves (they change their password) nor a deactivated admin.

Every path locks admin rows (in id order when two) before any token row (issuing revokes the
live token, a deactivation too), so two of them never deadlock. Like `identity.authenticate`,
`change_password` returns a failure that must be committed (it counts toward the lockout)
instead of raising it; the other failures raise and change nothing. The caller owns the
transaction and ends the admin's sessions (gateway.auth `cut_sessions`): core knows nothing of
tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import FieldCipher
from core.errors import (
    AccountLocked,
    AuthFailed,
    Conflict,
    CoreError,
    NotFound,
    OtpInvalid,
    TokenInvalid,
    ValidationFailed,
)
from core.identity import (
    TOTP_ISSUER,
    TOTP_SECRET_CHARS,
    check_password_policy,
    hash_secret,
    matching_step,
    record_failure,
    verify_secret,
)
from core.models import AdminPasswordHistory, AdminResetToken, AdminUser, AuditLog

PASSWORD_HISTORY = 5  # a new password may not be any of this many last ones (current included)
RESET_TOKEN_BYTES = 32
# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet. Anything else is
# refused before the database is asked.
_RESET_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")


class PasswordReused(ValidationFailed):
    code = "PASSWORD_REUSED"
    default_message = f"The new password must differ from your last {PASSWORD_HISTORY} passwords"


@dataclass(frozen=True, slots=True)
class ResetIssued:
    """A reset token to hand over out of band; the gateway never shows it again."""

    admin_id: int
    username: str
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ResetDone:
    admin_id: int
    username: str
    provisioning_uri: str  # the new TOTP secret, shown once


def _bad_reset_token() -> TokenInvalid:
    # One answer for unknown, used, revoked and expired: which it was is nobody's business.
    return TokenInvalid("The reset token is unknown, used or expired", code="INVALID_RESET_TOKEN")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_new_password(password: str) -> None:
    try:
        check_password_policy(password)
    except ValidationFailed as exc:
        raise ValidationFailed(exc.message, field="new_password") from None


async def _lock_user(db: AsyncSession, admin_id: int) -> AdminUser | None:
    """The admin's row, locked until the transaction ends (a login locks it too)."""
    return (
        await db.execute(select(AdminUser).where(AdminUser.id == admin_id).with_for_update())
    ).scalar_one_or_none()


async def _refuse_reuse(db: AsyncSession, user: AdminUser, password: str) -> None:
    """PasswordReused when `password` is the current one or one of the newest kept before it.
    The bcrypt checks run side by side, each in a thread."""
    older = (
        await db.execute(
            select(AdminPasswordHistory.password_hash)
            .where(AdminPasswordHistory.admin_id == user.id)
            .order_by(AdminPasswordHistory.id.desc())
            .limit(PASSWORD_HISTORY - 1)
        )
    ).scalars()
    hashes = [user.password_hash, *older]
    if any(await asyncio.gather(*(verify_secret(password, h) for h in hashes))):
        raise PasswordReused(field="new_password")


async def _replace_password(
    db: AsyncSession, user: AdminUser, new_hash: str, now: datetime, **more: object
) -> None:
    """Store `new_hash` (and `more` columns) and keep the replaced hash in the history, pruned
    to the newest the reuse check reads."""
    db.add(AdminPasswordHistory(admin_id=user.id, password_hash=user.password_hash))
    await db.flush()
    keep = (
        select(AdminPasswordHistory.id)
        .where(AdminPasswordHistory.admin_id == user.id)
        .order_by(AdminPasswordHistory.id.desc())
        .limit(PASSWORD_HISTORY - 1)
    )
    await db.execute(
        delete(AdminPasswordHistory).where(
            AdminPasswordHistory.admin_id == user.id,
            AdminPasswordHistory.id.not_in(keep.scalar_subquery()),
        )
    )
    await db.execute(
        update(AdminUser)
        .where(AdminUser.id == user.id)
        .values(password_hash=new_hash, updated_at=now, **more)
    )


async def change_password(
    db: AsyncSession,
    cipher: FieldCipher,
    *,
    admin_id: int,
    current_password: str,
    otp: str,
    new_password: str,
    password_rounds: int,
    max_failures: int,
    lockout_s: int,
    now: datetime | None = None,
) -> CoreError | None:
    """Change the admin's own password. None on success; a wrong password or code is returned
    after it was counted (commit, then raise it). A policy or reuse failure raises, having
    spent nothing: the reuse check comes after both factors (so it cannot be probed without the
    code) and its refusal rolls back, so the code's step is only stored by a change that
    happens."""
    now = now or datetime.now(UTC)
    _check_new_password(new_password)
    user = await _lock_user(db, admin_id)
    if user is None or not user.is_active:
        return AuthFailed()
    if user.locked_until is not None and user.locked_until > now:
        retry = int((user.locked_until - now).total_seconds()) + 1
        return AccountLocked("The account is locked; try again later", retry_after_s=retry)
    failed = "auth.password_change_failed"
    if not await verify_secret(current_password, user.password_hash):
        return await record_failure(db, user, now, max_failures, lockout_s, action=failed)
    step = matching_step(cipher.decrypt(user.totp_secret_enc), otp, now)
    if step is None or step <= user.totp_last_step:
        error = await record_failure(db, user, now, max_failures, lockout_s, action=failed)
        return error if isinstance(error, AccountLocked) else OtpInvalid()
    # After both factors: without the code, a stolen session and password could probe the
    # password history (a refusal counts nothing). The refusal raises, so the transaction rolls
    # back and the code's step is not spent.
    await _refuse_reuse(db, user, new_password)
    new_hash = await hash_secret(new_password, password_rounds)
    await _replace_password(
        db, user, new_hash, now, totp_last_step=step, failed_logins=0, locked_until=None
    )
    db.add(
        AuditLog(
            actor_type="admin",
            actor=user.username,
            action="admin.password_changed",
            target=user.username,
        )
    )
    return None


async def issue_reset(
    db: AsyncSession,
    *,
    actor_id: int | None,
    actor_type: str,
    actor: str,
    admin_id: int,
    ttl_s: int,
    now: datetime | None = None,
) -> ResetIssued:
    """A new reset token for the admin, valid `ttl_s` seconds; any earlier unused one dies.
    `actor_id` is the manager's admin id (None for the CLI)."""
    assert ttl_s > 0
    now = now or datetime.now(UTC)
    if admin_id == actor_id:
        raise Conflict(
            "You cannot reset your own credentials; change your password, or ask another admin",
            code="CANNOT_RESET_SELF",
        )
    # The manager's row too, both in id order: the token names the manager (a foreign key, so
    # the insert would share-lock their row anyway), and a deactivation of the manager that
    # runs now must either see this token or make this call fail, never deadlock with it.
    ids = sorted({admin_id} if actor_id is None else {admin_id, actor_id})
    locked = {
        row.id: row
        for row in (
            await db.execute(
                select(AdminUser)
                .where(AdminUser.id.in_(ids))
                .order_by(AdminUser.id)
                .with_for_update()
            )
        ).scalars()
    }
    if actor_id is not None and not (actor_id in locked and locked[actor_id].is_active):
        raise TokenInvalid("The admin no longer exists or is disabled", code="TOKEN_REVOKED")
    user = locked.get(admin_id)
    if user is None:
        raise NotFound(f"No admin {admin_id}")
    if not user.is_active:
        raise Conflict(
            f"{user.username!r} is deactivated; reactivate them before a reset",
            code="ADMIN_INACTIVE",
        )
    revoked = await db.execute(
        update(AdminResetToken)
        .where(
            AdminResetToken.admin_id == admin_id,
            AdminResetToken.used_at.is_(None),
            AdminResetToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .returning(AdminResetToken.id)
    )
    token = secrets.token_urlsafe(RESET_TOKEN_BYTES)
    expires_at = now + timedelta(seconds=ttl_s)
    db.add(
        AdminResetToken(
            admin_id=admin_id,
            token_hash=token_digest(token),
            issued_by=actor[:128],
            issued_by_id=actor_id,
            created_at=now,
            expires_at=expires_at,
        )
    )
    db.add(
        AuditLog(
            actor_type=actor_type,
            actor=actor,
            action="admin.reset_issued",
            target=user.username,
            details={
                "expires_at": expires_at.isoformat(),
                "revoked_earlier": len(revoked.all()),
            },
        )
    )
    await db.flush()
    return ResetIssued(admin_id, user.username, token, expires_at)


async def complete_reset(
    db: AsyncSession,
    cipher: FieldCipher,
    *,
    token: str,
    new_password: str,
    password_rounds: int,
    now: datetime | None = None,
) -> ResetDone:
    """Spend the token: new password, new TOTP secret, lockout cleared. A refusal (policy,
    reuse, token) raises and changes nothing; the token stays usable after a policy or reuse
    refusal, so the admin can try another password."""
    now = now or datetime.now(UTC)
    _check_new_password(new_password)
    if not _RESET_TOKEN_RE.fullmatch(token):
        raise _bad_reset_token()
    digest = token_digest(token)
    owner = (
        await db.execute(
            select(AdminResetToken.admin_id).where(AdminResetToken.token_hash == digest)
        )
    ).scalar_one_or_none()
    if owner is None:
        raise _bad_reset_token()
    user = await _lock_user(db, owner)  # before the token row: see the module docstring
    claimed = (
        await db.execute(
            update(AdminResetToken)
            .where(
                AdminResetToken.token_hash == digest,
                AdminResetToken.used_at.is_(None),
                AdminResetToken.revoked_at.is_(None),
                AdminResetToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(AdminResetToken.issued_by)
        )
    ).scalar_one_or_none()
    if claimed is None or user is None or not user.is_active:
        raise _bad_reset_token()
    await _refuse_reuse(db, user, new_password)
    new_hash = await hash_secret(new_password, password_rounds)
    secret = pyotp.random_base32(TOTP_SECRET_CHARS)
    await _replace_password(
        db,
        user,
        new_hash,
        now,
        totp_secret_enc=cipher.encrypt(secret),
        totp_last_step=0,  # steps of the old secret mean nothing to the new one
        failed_logins=0,
        locked_until=None,
    )
    db.add(
        AuditLog(
            actor_type="admin",
            actor=user.username,
            action="admin.reset_completed",
            target=user.username,
            details={"issued_by": claimed},
        )
    )
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=TOTP_ISSUER)
    return ResetDone(user.id, user.username, uri)
