"""Sessions: versioned JSON records in Redis with a TTL, written by one writer at a time.

A record is stored as `<version>|<json>`. Every write is a compare-and-set in one Lua script:
it succeeds only if the stored version is the one the writer read (or, for a new session, if
there is none), and otherwise hands back what is stored, so a conflict costs no extra read.
Because each instance keeps the records it last wrote in a small bounded cache, a navigation
step usually costs exactly one Redis round trip (the CAS) and a cache miss costs two (GET, CAS).
A stale cache entry is harmless: its CAS fails and returns the current record. The commands go
over one pipelined connection (`menus.redis_link`): every concurrent step shares it.

The cache is an optimisation, never a source of truth: the version check in Redis decides.
Keys carry a hash tag (`{provider:session}`) so they live in one slot on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from menus.redis_link import RedisLink, pack
from menus.schema import BEGIN

__all__ = ["pack"]  # re-exported: the store's RESP encoder (tests compare it with redis-py's)

CACHE_ENTRIES = 20_000
MAX_HISTORY = 20
IO_TIMEOUT_S = 2.0  # one Redis call of the store (a USSD step has ~10 s in all)

# KEYS[1] = session key; ARGV = expected version ('' = must not exist), new value, ttl in ms.
# Returns 1 on success, else the stored value (nil when there is none).
CAS_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
local expected = ARGV[1]
if expected == '' then
  if cur then return cur end
else
  if not cur then return false end
  if string.sub(cur, 1, string.len(expected) + 1) ~= expected .. '|' then return cur end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


# One encoder for every record (`json.dumps` with options builds a new one per call).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class Session:
    """The state of one USSD session; everything the next step needs."""

    key: str  # provider-namespaced session id
    msisdn: str
    menu: str
    version: int  # the menu version the session started on (kept to the end)
    language: str
    state: str = BEGIN
    page: int = 0
    history: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # encrypted at rest
    customer: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # steps committed
    last: dict[str, Any] | None = None  # {"hop", "fp", "text", "end"}: the stored reply
    inflight: dict[str, Any] | None = None  # {"hop", "fp", "at", "by"}: a step with side effects
    ended: bool = False
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return _ENCODE(
            {
                "k": self.key,
                "m": self.msisdn,
                "mn": self.menu,
                "mv": self.version,
                "l": self.language,
                "s": self.state,
                "p": self.page,
                "h": self.history,
                "v": self.vars,
                "x": self.secrets,
                "c": self.customer,
                "q": self.seq,
                "r": self.last,
                "f": self.inflight,
                "e": self.ended,
                "t": self.started_at,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> Session:
        d = json.loads(raw)
        return cls(
            key=d["k"],
            msisdn=d["m"],
            menu=d["mn"],
            version=d["mv"],
            language=d["l"],
            state=d["s"],
            page=d["p"],
            history=d["h"],
            vars=d["v"],
            secrets=d["x"],
            customer=d["c"],
            seq=d["q"],
            last=d["r"],
            inflight=d["f"],
            ended=d["e"],
            started_at=d["t"],
        )

    def push_history(self, screen: str) -> None:
        self.history.append(screen)
        if len(self.history) > MAX_HISTORY:
            del self.history[0]

    def close(self) -> None:
        """The session is over: keep only what answers a repeated request."""
        self.ended = True
        self.inflight = None
        self.secrets = {}
        self.vars = {}
        self.history = []


class Versioned:
    """A stored record: its version and JSON (parsed on demand: a replay needs only `last`).

    A record this instance wrote itself may also carry the `Session` it was encoded from, so
    the next step on it skips parsing the JSON. `session()` hands that object out once (the
    step that gets it mutates it); any other caller, e.g. a concurrent request for the same
    session, parses its own copy from `raw`."""

    __slots__ = ("_parsed", "raw", "version")

    def __init__(self, version: int, raw: str, parsed: Session | None = None) -> None:
        self.version = version
        self.raw = raw
        self._parsed = parsed

    def session(self) -> Session:
        parsed, self._parsed = self._parsed, None
        return parsed if parsed is not None else Session.from_json(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Versioned):
            return NotImplemented
        return (self.version, self.raw) == (other.version, other.raw)

    def __hash__(self) -> int:
        return hash((self.version, self.raw))

    def __repr__(self) -> str:
        return f"Versioned({self.version}, {self.raw!r})"


class SessionStore(Protocol):
    def key(self, namespace: str, session_id: str) -> str: ...

    def cached(self, key: str) -> Versioned | None: ...

    async def load(self, key: str) -> Versioned | None: ...

    async def save(
        self,
        key: str,
        expected: int | None,
        raw: str,
        ttl_s: int,
        parsed: Session | None = None,
    ) -> tuple[bool, Versioned | None]:
        """Write `raw` as version expected+1 (1 when new) if the stored version is `expected`
        (None: nothing stored). Returns (True, None), or (False, what is stored). `parsed`:
        the session `raw` was encoded from, which the caller no longer touches (a store may
        keep it for the next step)."""
        ...


def _decode(value: bytes | str | None) -> Versioned | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    version, _, raw = text.partition("|")
    return Versioned(int(version), raw)


class RedisSessionStore:
    """Sessions in Redis: one CAS script per write, a bounded local cache of own writes.

    Commands go over the store's own pipelined connection (`RedisLink`, made from `redis`'s
    connection settings), not through redis-py's `execute_command`: its pool, its lock and its
    StreamReader-based reads cost more client CPU per navigation step than the store's own
    work. Each call is bounded by `io_timeout_s` (TimeoutError; the link's deadline sweep, not
    a timer per call); a call that times out leaves the connection usable (its late answer is
    dropped), a lost connection fails the calls in flight and the next call connects again."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        cache_entries: int = CACHE_ENTRIES,
        io_timeout_s: float = IO_TIMEOUT_S,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.io_timeout_s = io_timeout_s
        self._sha = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._cache: OrderedDict[str, tuple[float, Versioned]] = OrderedDict()
        self._cache_entries = cache_entries
        self.link = RedisLink(redis, timeout_s=io_timeout_s)

    def key(self, namespace: str, session_id: str) -> str:
        return f"{self.prefix}ussd:{{{namespace}:{session_id}}}"

    def cached(self, key: str) -> Versioned | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            self._cache.pop(key, None)
            return None
        return value

    def _remember(self, key: str, value: Versioned | None, ttl_s: float) -> None:
        if value is None:
            self._cache.pop(key, None)
            return
        self._cache[key] = (time.monotonic() + ttl_s, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    async def load(self, key: str) -> Versioned | None:
        return _decode(await self._command("GET", key))

    async def save(
        self,
        key: str,
        expected: int | None,
        raw: str,
        ttl_s: int,
        parsed: Session | None = None,
    ) -> tuple[bool, Versioned | None]:
        version = 1 if expected is None else expected + 1
        value = f"{version}|{raw}"
        args = ("" if expected is None else str(expected), value, ttl_s * 1000)
        try:
            result = await self._cas(key, args)
        except BaseException:
            self.forget(key)
            raise
        if result == 1:
            self._remember(key, Versioned(version, raw, parsed), ttl_s)
            return True, None
        current = _decode(result)
        if current is not None and current.version == version and current.raw == raw:
            # Our own write: it landed, the connection dropped before Redis's answer and the
            # link sent it again, which found it stored. Taken for another writer's, a claim
            # had its step wait on itself and the hop was lost.
            self._remember(key, Versioned(version, raw, parsed), ttl_s)
            return True, None
        # Keep the cache honest: the next step starts from what is really stored.
        self._remember(key, current, ttl_s)
        return False, current

    async def _cas(self, key: str, args: tuple[str, str, int]) -> Any:
        # EVALSHA straight away: the script is loaded once per server, so this is the one round
        # trip; redis-py's Script wrapper costs more client CPU per call.
        try:
            return await self._command("EVALSHA", self._sha, 1, key, *args)
        except NoScriptError:
            return await self._command("EVAL", CAS_SCRIPT, 1, key, *args)

    async def _command(self, *args: str | int) -> Any:
        """Send one command and read its answer (errors from Redis raise, as in redis-py)."""
        return await self.link.command(*args)

    async def aclose(self) -> None:
        """Close the store's connection (the client passed in is the caller's to close)."""
        await self.link.aclose()


class MemorySessionStore:
    """The same contract in a dict: dry-run simulation and engine tests."""

    def __init__(self) -> None:
        self.data: dict[str, Versioned] = {}

    def key(self, namespace: str, session_id: str) -> str:
        return f"{namespace}:{session_id}"

    def cached(self, key: str) -> Versioned | None:
        return self.data.get(key)

    async def load(self, key: str) -> Versioned | None:
        return self.data.get(key)

    async def save(
        self,
        key: str,
        expected: int | None,
        raw: str,
        ttl_s: int,
        parsed: Session | None = None,
    ) -> tuple[bool, Versioned | None]:
        current = self.data.get(key)
        if (current.version if current is not None else None) != expected:
            return False, current
        self.data[key] = Versioned(1 if expected is None else expected + 1, raw)
        return True, None
