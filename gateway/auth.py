"""JWT access and refresh tokens with a Redis denylist.

Both tokens of one login share a session id (`sid`). Logout denylists the sid, so the access
token and its refresh token stop working at once. A refresh token is single-use: refreshing
denylists its `jti`; presenting a used refresh token again is treated as theft and revokes the
whole session. The access token carries the admin's permissions (signed), so a permission check
costs no database round trip; the denylist check costs one Redis round trip.
"""

from __future__ import annotations

import uuid
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

    def _deny_key(self, kind: str, value: str) -> str:
        return f"{self._prefix}deny:{kind}:{value}"

    def issue(self, principal: Principal, sid: str | None = None) -> TokenPair:
        now = datetime.now(UTC)
        sid = sid or uuid.uuid4().hex
        base = {"sub": str(principal.user_id), "usr": principal.username, "sid": sid, "iat": now}
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

    async def _denied(self, *keys: str) -> bool:
        try:
            return int(await self._redis.exists(*keys)) > 0
        except (RedisError, OSError) as exc:
            raise Unavailable("Token checks are temporarily unavailable") from exc

    async def verify_access(self, token: str) -> Principal:
        claims = self.decode(token, "access")
        if await self._denied(self._deny_key("sid", claims["sid"])):
            raise TokenInvalid("The session has ended", code="TOKEN_REVOKED")
        return Principal(
            user_id=int(claims["sub"]),
            username=str(claims.get("usr", "")),
            roles=tuple(claims.get("roles", ())),
            permissions=frozenset(claims.get("perms", ())),
            superuser=bool(claims.get("su", False)),
        )

    async def consume_refresh(self, token: str) -> dict[str, Any]:
        """Validate a refresh token and spend it; returns its claims."""
        claims = self.decode(token, "refresh")
        sid_key = self._deny_key("sid", claims["sid"])
        if await self._denied(sid_key):
            raise TokenInvalid("The session has ended", code="TOKEN_REVOKED")
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
        return claims

    async def revoke_session(self, sid: str) -> None:
        try:
            await self._redis.set(self._deny_key("sid", sid), "1", ex=self.refresh_ttl_s + LEEWAY_S)
        except (RedisError, OSError) as exc:
            raise Unavailable("Logout is temporarily unavailable") from exc
