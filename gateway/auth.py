"""JWT access and refresh tokens with a Redis denylist.

Both tokens of one login share a session id (`sid`). Logout denylists the sid, so the access
token and its refresh token stop working at once. A refresh token is single-use: refreshing
denylists its `jti`; presenting a used refresh token again is treated as theft and revokes the
whole session. The access token carries the admin's permissions (signed), so a permission check
costs no database round trip; the denylist check costs one Redis round trip.

Cutting off every session of one admin (deactivated, roles changed) is a per-admin generation
in Redis (`{prefix}auth:user:{id}:gen`, absent = 0) that both tokens copy at issue (`gen`); a
token whose `gen` is below the admin's generation is revoked. It is read in the same round
trip as the sid denylist (one pipeline), so the check costs no more round trips.
`cut_sessions` raises the generation to one more than it was, and to at least Redis's own
clock in milliseconds: it only ever grows, even after the key expired or Redis lost it, so a
cut always revokes every token issued before it. Why not a "tokens issued before T" time: the
gateway instances' clocks would be compared with each other, and `iat` (whole seconds) cannot
say whether a token of the same second came before or after the cut. Race-free when the issuer
reads the generation before it reads the admin from the database (or while holding the
admin's row lock) and `cut_sessions` runs again after the change commits: a token issued from
the old state then carries an old generation.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.crypto import derive_key
from core.errors import TokenInvalid, Unavailable
from core.identity import Principal

ALGORITHM = "HS256"
LEEWAY_S = 5
REQUIRED_CLAIMS = ["exp", "iat", "sub", "typ", "sid", "jti"]
# Admins whose sessions `cut_sessions_of` ends per pipelined round trip: bounds one request's
# size while a role held by hundreds of admins still costs a few round trips.
CUT_BATCH = 200
# Raise the generation (KEYS[1]) to max(generation + 1, Redis's clock in ms) and keep it for
# ARGV[1] seconds (past every token issued before: after that a token carries 0 or a newer
# generation). Milliseconds (13 digits) because Lua turns numbers into text with 14 digits.
_CUT = r"""
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local generation = math.max((tonumber(redis.call('GET', KEYS[1])) or 0) + 1, ms)
redis.call('SET', KEYS[1], string.format('%d', generation), 'EX', ARGV[1])
return string.format('%d', generation)
"""


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """A spent refresh token: whose session, and the admin's generation read before the
    caller reads the admin from the database (see the module docstring)."""

    user_id: int
    sid: str
    generation: int


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
        }


class TokenService:
    def __init__(
        self,
        secret: str,
        redis: Redis,
        *,
        prefix: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
    ) -> None:
        self._key = derive_key(secret, "jwt-hs256")
        self._redis = redis
        self._prefix = prefix
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._cut = redis.register_script(_CUT)

    def _deny_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}deny:{kind}:{value}"

    def _generation_key(self, user_id: int) -> str:
        return f"{self._prefix}auth:user:{user_id}:gen"

    def issue(self, principal: Principal, sid: str | None = None, generation: int = 0) -> TokenPair:
        """Tokens for `principal`; `generation` is `generation(user_id)` read before the
        principal was loaded (0 for an admin whose sessions were never cut)."""
        now = datetime.now(UTC)
        sid = sid or uuid.uuid4().hex
        base = {
            "sub": str(principal.user_id),
            "usr": principal.username,
            "sid": sid,
            "iat": now,
            "gen": generation,
        }
        access = {
            **base,
            "typ": "access",
            "jti": uuid.uuid4().hex,
            "exp": now + timedelta(seconds=self.access_ttl_s),
            "roles": list(principal.roles),
            "perms": sorted(principal.permissions),
            "su": principal.superuser,
        }
        refresh = {
            **base,
            "typ": "refresh",
            "jti": uuid.uuid4().hex,
            "exp": now + timedelta(seconds=self.refresh_ttl_s),
        }
        return TokenPair(
            access_token=jwt.encode(access, self._key, algorithm=ALGORITHM),
            refresh_token=jwt.encode(refresh, self._key, algorithm=ALGORITHM),
            expires_in=self.access_ttl_s,
        )

    def decode(self, token: str, expected_type: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("The token has expired", code="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise TokenInvalid() from None
        if claims.get("typ") != expected_type:
            raise TokenInvalid(f"An {expected_type} token is required")
        return claims

    async def _revoked(self, claims: dict[str, Any]) -> int:
        """Whether the token's session was ended or its admin's sessions cut (TOKEN_REVOKED),
        in one Redis round trip; returns the admin's current generation."""
        sid_key = self._deny_key("sid", str(claims["sid"]))
        gen_key = self._generation_key(_user_id(claims))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(sid_key)
                pipe.get(gen_key)
                denied, raw_generation = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("Token checks are temporarily unavailable") from exc
        if int(denied):
            raise TokenInvalid("The session has ended", code="TOKEN_REVOKED")
        current = int(raw_generation or 0)
        if _generation(claims) < current:
            raise TokenInvalid(
                "The admin's sessions were ended (deactivated or roles changed); log in again",
                code="TOKEN_REVOKED",
            )
        return current

    async def verify_access(self, token: str) -> Principal:
        claims = self.decode(token, "access")
        await self._revoked(claims)
        return Principal(
            user_id=_user_id(claims),
            username=str(claims.get("usr", "")),
            roles=tuple(claims.get("roles", ())),
            permissions=frozenset(claims.get("perms", ())),
            superuser=bool(claims.get("su", False)),
        )

    async def consume_refresh(self, token: str) -> RefreshGrant:
        """Validate a refresh token and spend it."""
        claims = self.decode(token, "refresh")
        generation = await self._revoked(claims)
        ttl = max(1, int(claims["exp"] - datetime.now(UTC).timestamp()) + LEEWAY_S)
        try:
            first_use = await self._redis.set(
                self._deny_key("jti", claims["jti"]), "1", ex=ttl, nx=True
            )
        except (RedisError, OSError) as exc:
            raise Unavailable("Token checks are temporarily unavailable") from exc
        if not first_use:
            await self.revoke_session(claims["sid"])
            raise TokenInvalid("This refresh token was already used", code="TOKEN_REVOKED")
        return RefreshGrant(_user_id(claims), str(claims["sid"]), generation)

    async def generation(self, user_id: int) -> int:
        """The admin's current generation, for `issue`: read it before reading the admin (or
        while holding the admin's row lock)."""
        try:
            raw = await self._redis.get(self._generation_key(user_id))
        except (RedisError, OSError) as exc:
            raise Unavailable("Token checks are temporarily unavailable") from exc
        return int(raw or 0)

    async def cut_sessions(self, user_id: int) -> None:
        """Revoke every access and refresh token issued to the admin so far."""
        keep_s = self.refresh_ttl_s + 2 * LEEWAY_S
        try:
            await self._cut(keys=[self._generation_key(user_id)], args=[keep_s])
        except (RedisError, OSError) as exc:
            raise Unavailable("Ending the admin's sessions is temporarily unavailable") from exc

    async def cut_sessions_of(self, user_ids: Sequence[int]) -> None:
        """`cut_sessions` for each admin (every holder of a role that lost permissions), in
        pipelines of CUT_BATCH: one round trip per batch instead of one per admin."""
        keep_s = self.refresh_ttl_s + 2 * LEEWAY_S
        try:
            for start in range(0, len(user_ids), CUT_BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user_id in user_ids[start : start + CUT_BATCH]:
                        await self._cut(
                            keys=[self._generation_key(user_id)], args=[keep_s], client=pipe
                        )
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("Ending the admins' sessions is temporarily unavailable") from exc

    async def revoke_session(self, sid: str) -> None:
        try:
            await self._redis.set(self._deny_key("sid", sid), "1", ex=self.refresh_ttl_s + LEEWAY_S)
        except (RedisError, OSError) as exc:
            raise Unavailable("Logout is temporarily unavailable") from exc


def _user_id(claims: dict[str, Any]) -> int:
    try:
        return int(claims["sub"])
    except (TypeError, ValueError):
        raise TokenInvalid() from None


def _generation(claims: dict[str, Any]) -> int:
    """The token's generation; a token from before generations existed is generation 0."""
    value = claims.get("gen", 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenInvalid()
    return value
