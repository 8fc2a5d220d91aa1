"""SMS channel benchmark: MO-to-MT round trips through the whole channel against the test SMSC.

    .venv/bin/python bench/sms.py            (DATABASE_URL if set, else an embedded PostgreSQL)
    .venv/bin/python bench/sms.py --quick --repeats 1 --profile /tmp/sms.prof
        (unthrottled only; cProfile of the gateway process over the product runs)

The SMSC is the smpp34 test peer (tests/smsc_peer.py) in its own process. Each round trip is
the real path: deliver_sm -> MO stored (de-duplicated, masked, encrypted) -> deliver_sm_resp ->
worker -> handler -> send_text (idempotency look-up, split, pacer, window) -> submit_sm ->
submit_sm_resp -> MT recorded -> MO marked processed. The handler echoes "PONG <n>".

Figures:
- at a configured TPS of 30 and 100 (MOs offered at 1.2x that rate, the SMSC enforcing the
  limit): achieved MT rate / configured (target >= 0.95, no throttling) and the gateway
  process's CPU seconds per 1,000 round trips;
- unthrottled: round trips/s as a ratio to a floor measured in the same run, a bare asyncio
  client (hand-packed PDUs, no codec library) sending submit_sm and awaiting submit_sm_resp
  with the same window (10) against the same SMSC process (target >= 0.5x); and, to show where
  the rest goes, to a round-trip floor: a bare asyncio ESME doing the same MO -> MT exchange
  with no codec library and no store, and to a ceiling: the same channel with its message
  store in memory (nothing durable: a diagnostic, not the product; it shows what the
  PostgreSQL store costs). Floors, ceiling and product are interleaved, three times each;
  each repeat's ratio is taken against its own floor, and every figure is printed as the
  median with its range and the individual runs (the machine is shared: load varies).

Before each product run the SMS tables are vacuumed, as autovacuum would between bursts (see
`vacuum`): on a server with autovacuum off every repeat would pay for the runs before it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.scratch import scratch_database  # noqa: E402
from channels.sms.channel import ChannelTuning, SmsChannel, assemble_mo  # noqa: E402
from channels.sms.handler import InboundSms  # noqa: E402
from config.settings import SmppBind  # noqa: E402
from core.crypto import FieldCipher  # noqa: E402
from core.sms_messages import InboundRecord, MtRecord, SmsMessageStore, StoredMo  # noqa: E402
from gateway import db as dbmod  # noqa: E402
from tests.smsc_peer import SmscPeer  # noqa: E402

WINDOW = 10
FLOOR_SUBMITS = 20_000
UNTHROTTLED_ROUND_TRIPS = 4_000
THROTTLED_SECONDS = 10
OFFER_FACTOR = 1.2
REPEATS = 3
POLL_S = 0.5
RUN_TIMEOUT_S = 180


def log(message: str) -> None:
    print(message, flush=True)


# --- floor: a bare asyncio ESME -----------------------------------------------------------------

HEADER = struct.Struct(">LLLL")


async def floor(port: int, count: int, window: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bind = b"floor\x00pw\x00\x00\x34\x00\x00\x00"
    writer.write(HEADER.pack(16 + len(bind), 0x09, 0, 1) + bind)
    length, *_ = HEADER.unpack(await reader.readexactly(16))
    await reader.readexactly(length - 16)
    body = (
        b"\x00\x03\x00"
        + b"12345\x00"
        + b"\x01\x01"
        + b"254799000000\x00"
        + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        + bytes([10])
        + b"PONG floor"
    )
    slots = asyncio.Semaphore(window)
    done = 0
    finished = asyncio.Event()

    async def read() -> None:
        nonlocal done
        while done < count:
            length, command_id, _, seq = HEADER.unpack(await reader.readexactly(16))
            if length > 16:
                await reader.readexactly(length - 16)
            if command_id == 0x80000004:
                done += 1
                slots.release()
            elif command_id == 0x15:
                writer.write(HEADER.pack(16, 0x80000015, 0, seq))
        finished.set()

    reading = asyncio.create_task(read())
    start = time.perf_counter()
    for seq in range(2, count + 2):
        await slots.acquire()
        writer.write(HEADER.pack(16 + len(body), 0x04, 0, seq) + body)
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await finished.wait()
    elapsed = time.perf_counter() - start
    await reading
    writer.write(HEADER.pack(16, 0x06, 0, count + 2))
    writer.close()
    return count / elapsed


async def round_trip_floor(peer: SmscPeer, count: int, window: int) -> dict[str, float]:
    """The same MO -> MT round trips by a bare asyncio ESME: ack each deliver_sm, answer with a
    submit_sm (window 10); no codec library, no store. Bounded by the SMSC process and
    loopback, it shows how much of the gap to the submit floor the round trip itself costs.
    Returns its rate and the CPU per 1,000 round trips of the ESME and of the SMSC."""
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    bind = b"rtfloor\x00pw\x00\x00\x34\x00\x00\x00"
    writer.write(HEADER.pack(16 + len(bind), 0x09, 0, 1) + bind)
    length, *_ = HEADER.unpack(await reader.readexactly(16))
    await reader.readexactly(length - 16)
    await wait_bound_at(peer)
    slots = asyncio.Semaphore(window)
    seqs = iter(range(2, 10**9))
    done = 0
    finished = asyncio.Event()

    async def reply(source: bytes) -> None:
        await slots.acquire()
        body = (
            b"\x00\x03\x00"
            + b"12345\x00"
            + b"\x01\x01"
            + source
            + b"\x00"
            + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"
            + bytes([4])
            + b"PONG"
        )
        writer.write(HEADER.pack(16 + len(body), 0x04, 0, next(seqs)) + body)

    async def read() -> None:
        nonlocal done
        tasks = set()
        while done < count:
            length, command_id, _, seq = HEADER.unpack(await reader.readexactly(16))
            body = await reader.readexactly(length - 16) if length > 16 else b""
            if command_id == 0x05:
                writer.write(HEADER.pack(17, 0x80000005, 0, seq) + b"\x00")
                start = body.index(b"\x00") + 3  # service_type, then source TON and NPI
                task = asyncio.create_task(reply(body[start : body.index(b"\x00", start)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif command_id == 0x80000004:
                done += 1
                slots.release()
            elif command_id == 0x15:
                writer.write(HEADER.pack(16, 0x80000015, 0, seq))
        finished.set()

    reading = asyncio.create_task(read())
    assert peer.proc is not None
    cpu0, smsc0 = time.process_time(), proc_cpu_s([peer.proc.pid])
    await peer.flood(count=count, rate=0, window=window, source_prefix=new_prefix())
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await finished.wait()
    await reading
    cpu, smsc1 = time.process_time() - cpu0, proc_cpu_s([peer.proc.pid])
    stats = await peer.flood_stats()
    writer.write(HEADER.pack(16, 0x06, 0, next(seqs)))
    writer.close()
    return {
        "round_trips_per_s": count / (stats["last_mt"] - stats["first_mo"]),
        "esme_cpu_s_per_1000": cpu / count * 1000,
        "smsc_cpu_s_per_1000": cpu_used(smsc0, smsc1) / count * 1000,
    }


def proc_cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of local processes, from /proc; a process that is not
    visible (a remote database, one that exited) is left out."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """Processes that appeared during the run count from zero."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


async def backend_pids(store: SmsMessageStore) -> list[int]:
    rows = await store._pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    )
    return [r["pid"] for r in rows]


SMS_TABLES = ("sms_messages", "sms_mo_seen", "sms_mt_parts", "sms_mo_parts")


async def vacuum(store: SmsMessageStore) -> None:
    """What autovacuum does between bursts in production. A server run with autovacuum off (as
    this machine's is) keeps every dead row of the runs before: the MO's `processed` update
    leaves one per round trip, and PostgreSQL's CPU per round trip grew run after run (0.25 ->
    0.60 s per 1,000 over six runs of 4,000; 0.20 with a VACUUM before each)."""
    await store._pool.execute(f"VACUUM (ANALYZE) {', '.join(SMS_TABLES)}")


def new_prefix() -> str:
    return "2547" + str(uuid.uuid4().int)[:2]


async def wait_bound_at(peer: SmscPeer) -> None:
    """Until the SMSC holds exactly one bound session: the one about to be measured (the
    previous run's, just unbound, must be gone, or the flood could pick it)."""
    deadline = time.monotonic() + 10
    while True:
        if await peer.bound() == 1 or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def wait_replies(peer: SmscPeer, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        stats = await peer.flood_stats()
        if stats.get("mt", 0) >= count or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(POLL_S)


class MemoryStore:
    """The ceiling's store: what the channel calls on the MO -> MT path, kept in memory (MOs
    de-duplicated by key, nothing written anywhere). Not durable; measurement only."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._seen: set[str] = set()

    async def record_mo(self, rec: InboundRecord) -> StoredMo | None:
        await asyncio.sleep(0)  # the real store answers after a round trip: yield like it
        if rec.dedupe_key in self._seen:
            return None
        self._seen.add(rec.dedupe_key)
        return StoredMo(
            next(self._ids),
            rec.smsc,
            rec.msisdn,
            rec.short_code,
            rec.text,
            1,
            True,
            1,
            datetime.now(UTC),
        )

    async def mo_processed(self, mo_id: int, replies: Any = ()) -> None:
        await asyncio.sleep(0)

    async def record_mt(self, rec: MtRecord) -> None:
        await asyncio.sleep(0)

    async def find_mt(self, ref: str) -> None:
        return None

    async def extend_dedupe(self, keys: Any) -> None:
        return None

    async def claim_mo(self, limit: int, max_attempts: int) -> list[StoredMo]:
        return []

    async def expire_part_groups(self, timeout_s: float) -> list[StoredMo]:
        return []

    async def give_up_mo(self, max_attempts: int) -> int:
        return 0

    async def purge(self) -> None:
        return None

    async def drain(self) -> None:
        return None


# --- product: the SMS channel -------------------------------------------------------------------


class Echo:
    def __init__(self, channel: SmsChannel) -> None:
        self.channel = channel

    async def handle(self, sms: InboundSms) -> None:
        number = sms.text.split()[-1]
        await self.channel.send_text(
            sms.msisdn, f"PONG {number}", ref=f"mo:{sms.id}", first_attempt=sms.attempt == 1
        )


async def round_trips(
    peer: SmscPeer,
    store: SmsMessageStore | MemoryStore,
    *,
    tps: float,
    count: int,
    offer: float,
) -> dict[str, float]:
    if isinstance(store, SmsMessageStore):
        await vacuum(store)
    bind = SmppBind("bench", "pw", "127.0.0.1", peer.port, tps=tps, window=WINDOW)
    channel = SmsChannel(
        [bind],
        store,  # type: ignore[arg-type]  # the ceiling's MemoryStore is duck-typed
        dedupe_secret=os.urandom(32),
        tuning=ChannelTuning(),
    )
    channel.handler = Echo(channel)
    await channel.start()
    try:
        assert await channel.sessions[0].wait_bound(10), "no bind"
        await wait_bound_at(peer)
        assert peer.proc is not None
        smsc = [peer.proc.pid]
        cpu0, smsc0 = time.process_time(), proc_cpu_s(smsc)
        pg0 = proc_cpu_s(await backend_pids(store)) if isinstance(store, SmsMessageStore) else {}
        await peer.flood(count=count, rate=offer, window=WINDOW, source_prefix=new_prefix())
        stats = await wait_replies(peer, count)
        cpu = time.process_time() - cpu0
        pg1 = proc_cpu_s(await backend_pids(store)) if isinstance(store, SmsMessageStore) else {}
        smsc1 = proc_cpu_s(smsc)
        session = channel.sessions[0]
        ack_ms = 1000 * session.ack_seconds / max(session.acks, 1)
    finally:
        await channel.stop()
    if stats["mt"] < count:
        raise RuntimeError(f"only {stats['mt']} of {count} replies arrived: {stats}")
    return {
        "round_trips_per_s": count / (stats["last_mt"] - stats["first_mo"]),
        "mt_per_s": (count - 1) / (stats["last_mt"] - stats["first_mt"]),
        "cpu_s_per_1000": cpu / count * 1000,
        "pg_cpu_s_per_1000": cpu_used(pg0, pg1) / count * 1000,
        "smsc_cpu_s_per_1000": cpu_used(smsc0, smsc1) / count * 1000,
        "throttled": stats["throttled"],
        "ack_ms": ack_ms,
    }


# --- setup --------------------------------------------------------------------------------------


def setup_line() -> str:
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("smpplib", "smpp34", "asyncpg", "aiohttp")
    )
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, {versions}"
    )


async def main(args: argparse.Namespace) -> None:
    log(f"setup: {setup_line()}")
    with tempfile.TemporaryDirectory() as tmpdir:
        async with scratch_database("bench_sms") as url:
            # As gateway/sms.py builds the store's pool.
            pool = await dbmod.make_pool(
                url, min_size=2, max_size=10, reset=dbmod.keep_session, generic_plans=True
            )
            cipher = FieldCipher("bench-secret-" + "x" * 32)
            store = SmsMessageStore(pool, cipher, assemble=assemble_mo)
            peer = SmscPeer(Path(tmpdir))
            await peer.start()
            try:
                await run(peer, store, args)
            finally:
                await peer.close()
                await pool.close()


async def run(peer: SmscPeer, store: SmsMessageStore, args: argparse.Namespace) -> None:
    log("warm-up: 300 round trips")
    await round_trips(peer, store, tps=10_000, count=300, offer=0)

    results = {}
    for tps in () if args.quick else (30, 100):
        count = int(tps * THROTTLED_SECONDS)
        await peer.configure(max_tps=tps)
        log(f"throttled: TPS {tps}, {count} MOs offered at {OFFER_FACTOR}x ...")
        results[tps] = await round_trips(
            peer, store, tps=tps, count=count, offer=tps * OFFER_FACTOR
        )
    await peer.configure(max_tps=0)

    floors, rt_floors, ceilings, products = [], [], [], []
    profiler = cProfile.Profile() if args.profile else None
    repeats = args.repeats
    for repeat in range(1, repeats + 1):
        log(f"[{repeat}/{repeats}] floor: bare asyncio client, {FLOOR_SUBMITS} submit_sm ...")
        floors.append(await floor(peer.port, FLOOR_SUBMITS, WINDOW))
        log(f"[{repeat}/{repeats}] round-trip floor: bare asyncio ESME, MO -> MT ...")
        rt_floors.append(await round_trip_floor(peer, UNTHROTTLED_ROUND_TRIPS, WINDOW))
        log(f"[{repeat}/{repeats}] ceiling: the SMS channel with its store in memory ...")
        ceilings.append(
            await round_trips(
                peer, MemoryStore(), tps=10_000, count=UNTHROTTLED_ROUND_TRIPS, offer=0
            )
        )
        log(f"[{repeat}/{repeats}] unthrottled: the SMS channel, MO -> MT ...")
        if profiler is not None:
            profiler.enable()
        products.append(
            await round_trips(peer, store, tps=10_000, count=UNTHROTTLED_ROUND_TRIPS, offer=0)
        )
        if profiler is not None:
            profiler.disable()
    if profiler is not None:
        profiler.dump_stats(args.profile)
        log(f"profile of the product runs written to {args.profile}")

    log("")
    log("results")
    for tps, r in results.items():
        ratio = r["mt_per_s"] / tps
        met = "met" if ratio >= 0.95 and not r["throttled"] else "NOT MET"
        log(
            f"  TPS {tps:>3}: achieved {r['mt_per_s']:.1f}/s = {ratio:.3f}x configured "
            f"(target >= 0.95, no throttling: {met}), throttled {r['throttled']}; CPU s per "
            f"1,000 round trips: gateway {r['cpu_s_per_1000']:.2f}, PostgreSQL backends "
            f"{r['pg_cpu_s_per_1000']:.2f}, test SMSC {r['smsc_cpu_s_per_1000']:.2f}"
        )
    rates = [p["round_trips_per_s"] for p in products]
    # Floors and product run interleaved: each repeat's ratio uses its own floor, so a
    # change in the machine's load between repeats shows up as spread, not as a bias.
    ratios = [rate / fl for rate, fl in zip(rates, floors, strict=True)]
    rt_rates = [f["round_trips_per_s"] for f in rt_floors]
    rt_ratios = [rate / fl for rate, fl in zip(rates, rt_rates, strict=True)]
    ceiling_rates = [c["round_trips_per_s"] for c in ceilings]
    ceiling_ratios = [rate / fl for rate, fl in zip(ceiling_rates, floors, strict=True)]

    def spread(values: list[float], fmt: str = ".0f") -> str:
        return (
            f"{statistics.median(values):{fmt}} (range {min(values):{fmt}}-{max(values):{fmt}},"
            f" runs {', '.join(f'{v:{fmt}}' for v in values)})"
        )

    ratio = statistics.median(ratios)
    log(f"  unthrottled MO -> MT, {len(products)} interleaved repeats, median (range, runs):")
    log(f"    the SMS channel:               {spread(rates)} round trips/s")
    log(f"    floor, bare submit_sm client:  {spread(floors)} submits/s")
    log(f"    round-trip floor, bare ESME:   {spread(rt_rates)} round trips/s")
    log(
        f"    RATIO channel / floor:         {spread(ratios, '.2f')}x "
        f"(target >= 0.5: {'met' if ratio >= 0.5 else 'NOT MET'})"
    )
    log(f"    ratio channel / round-trip floor: {spread(rt_ratios, '.2f')}x")
    log(
        f"    ceiling, store in memory (not durable): {spread(ceiling_rates)} round trips/s = "
        f"{spread(ceiling_ratios, '.2f')}x the floor; gateway CPU s per 1,000: "
        f"{spread([c['cpu_s_per_1000'] for c in ceilings], '.2f')}"
    )
    # The SMSC's window of 10 MOs waits on these: deliver_sm read -> deliver_sm_resp written.
    acks = spread([p["ack_ms"] for p in products], ".2f")
    memory_acks = spread([c["ack_ms"] for c in ceilings], ".2f")
    log(f"    MO acknowledgement, ms per MO: the channel {acks}; store in memory {memory_acks}")
    for key, name in (
        ("cpu_s_per_1000", "gateway"),
        ("pg_cpu_s_per_1000", "its PostgreSQL backends"),
        ("smsc_cpu_s_per_1000", "test SMSC"),
    ):
        log(f"    CPU s per 1,000 round trips, {name}: {spread([p[key] for p in products], '.2f')}")
    # What the target leaves: at 0.5x the floor every process on this machine shares the
    # cores' CPU per round trip; the round-trip floor's own processes take their part first.
    cores = os.cpu_count() or 1
    budget = statistics.median(cores / (0.5 * fl) * 1000 for fl in floors)
    bare = statistics.median(f["esme_cpu_s_per_1000"] + f["smsc_cpu_s_per_1000"] for f in rt_floors)
    smsc = statistics.median(f["smsc_cpu_s_per_1000"] for f in rt_floors)
    log(
        f"    CPU budget at the target (0.5x the floor on {cores} cores): {budget:.2f} s per "
        f"1,000 round trips for every process; the bare round trip uses {bare:.2f} of it "
        f"(test SMSC {smsc:.2f}), leaving {budget - bare:.2f} for codec, store and PostgreSQL"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the throttled runs")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="unthrottled repeats")
    parser.add_argument("--profile", help="write a cProfile of the gateway's product runs here")
    asyncio.run(main(parser.parse_args()))
