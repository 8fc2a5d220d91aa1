"""Agent devices benchmark: location messages/s through the broker into geofence decisions, and
in-process decisions/s. Every figure is printed next to a floor measured in the same run.

    .venv/bin/python bench/agents.py [--messages 30000] [--decisions 200000]

End to end: 1,000 agents and 10,000 fences (each agent assigned one; all in the STRtree). A
publisher process sends native location messages round-robin over the agents; the gateway's agent
runtime (MQTT client, JSON parsing and validation, Redis state with one MGET + one Lua
compare-and-set per batch, zone tracking, events to PostgreSQL, history by COPY) consumes them.
Floor: the same MQTT client with a handler that only parses the JSON. Runs go floor, gateway,
floor; the ratio uses the floors' median.

Broker: a Mosquitto of our own on a free port when the binary exists, else MQTT_URL, else the
embedded amqtt. PostgreSQL and Redis: DATABASE_URL / REDIS_URL, else the embedded engines; a
database and a Redis prefix of the benchmark's own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import numpy as np
import shapely

from channels.agents.mqtt import Message, MqttService
from config.settings import load_settings
from gateway import db as dbmod
from gateway.agents import build_runtime, connected, running
from gateway.app import make_redis
from gateway.embedded import EmbeddedMqtt, free_port, port_open
from gateway.services import storage_endpoints
from geofence.decision import decide_one
from geofence.fences import GEOD, fence_from_geojson
from geofence.index import FenceIndex

N_AGENTS = 1_000
N_FENCES = 10_000
CENTRE = (36.82, -1.29)
RNG = random.Random(42)
AT_SHOP = 0.85
IDLE_S = 10.0


# --- fences ---------------------------------------------------------------------------------------


def fence_features(n: int) -> list[dict[str, Any]]:
    """Half circles, half 32-vertex polygons, 100-600 m across, spread over ~50 x 35 km."""
    out = []
    for i in range(n):
        lon = CENTRE[0] + RNG.uniform(-0.22, 0.22)
        lat = CENTRE[1] + RNG.uniform(-0.16, 0.16)
        radius = RNG.uniform(100, 600)
        if i % 2:
            out.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                        "properties": {"radius_m": radius}})  # fmt: skip
            continue
        ring = []
        for k in range(32):
            az = k * 360 / 32
            x, y, _ = GEOD.fwd(lon, lat, az, radius * RNG.uniform(0.7, 1.0))
            ring.append([x, y])
        ring.append(ring[0])
        out.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {}})  # fmt: skip
    return out


def point_near(feature: dict[str, Any]) -> tuple[float, float]:
    geometry = feature["geometry"]
    if geometry["type"] == "Point":
        lon, lat = geometry["coordinates"]
        reach = feature["properties"]["radius_m"]
    else:
        xs = [p[0] for p in geometry["coordinates"][0]]
        ys = [p[1] for p in geometry["coordinates"][0]]
        lon, lat = sum(xs) / len(xs), sum(ys) / len(ys)
        reach = GEOD.inv(min(xs), lat, max(xs), lat)[2] / 2
    # Agents mostly work at their shop: 85% of fixes well inside, 15% anywhere out to 1.6x the
    # fence's reach (in, near the edge, or out), so zones do change and events are written.
    spread = 0.5 if RNG.random() < AT_SHOP else 1.6
    x, y, _ = GEOD.fwd(lon, lat, RNG.uniform(0, 360), RNG.uniform(0, spread) * reach)
    return x, y


# --- in-process decisions ------------------------------------------------------------------------


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.inf


def in_process(features: list[dict[str, Any]], n: int) -> None:
    print(f"\n== in-process geofence decisions ({n:,} fixes, each against its agent's fence)")
    t = time.perf_counter()
    fences = [fence_from_geojson(i + 1, 1, f) for i, f in enumerate(features)]
    print(f"built {len(fences):,} fences in {time.perf_counter() - t:.2f} s")
    picks = [RNG.randrange(len(fences)) for _ in range(n)]
    points = [point_near(features[i]) for i in picks]
    accuracies = [RNG.choice([5.0, 10.0, 20.0, 30.0, 65.0]) for _ in range(n)]

    # Floor: the bare planar containment test in degrees (no metres, no accuracy, no circles).
    planar = [shapely.Polygon(f["geometry"]["coordinates"][0]) if f["geometry"]["type"] ==
              "Polygon" else shapely.Point(f["geometry"]["coordinates"]).buffer(0.004, 8)
              for f in features]  # fmt: skip
    for g in planar:
        shapely.prepare(g)
    t = time.perf_counter()
    for i, (lon, lat) in zip(picks, points, strict=True):
        shapely.contains_xy(planar[i], lon, lat)
    floor_s = time.perf_counter() - t

    t = time.perf_counter()
    zones: dict[str, int] = {}
    for i, (lon, lat), acc in zip(picks, points, accuracies, strict=True):
        zone = decide_one(fences[i], lon, lat, acc).zone
        zones[zone] = zones.get(zone, 0) + 1
    decide_s = time.perf_counter() - t
    floor, product = rate(n, floor_s), rate(n, decide_s)
    print(f"floor   planar contains_xy          {floor:>12,.0f} /s")
    print(f"gateway three-state decision (m)    {product:>12,.0f} /s   "
          f"= {product / floor:.2f}x floor; target 100,000/s: "
          f"{'met' if product >= 100_000 else 'NOT met'}")  # fmt: skip
    print(f"        zones: {zones}")

    index = FenceIndex(fences)
    q = min(n, 50_000)
    t = time.perf_counter()
    hits = sum(len(index.containing(lon, lat)) for lon, lat in points[:q])
    lookup = rate(q, time.perf_counter() - t)
    print(f"STRtree 'which of {len(fences):,} fences contain this point' {lookup:>10,.0f} /s "
          f"= {lookup / floor:.3f}x floor ({hits:,} hits)")  # fmt: skip


# --- through the broker --------------------------------------------------------------------------


def publisher(job: dict[str, Any], ready: Any, go: Any, done: Any) -> None:
    url, codes, points, n, t0 = job["url"], job["codes"], job["points"], job["n"], job["t0"]
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from channels.agents.mqtt import BrokerAddress

    address = BrokerAddress.parse(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
    if address.username:
        client.username_pw_set(address.username, address.password)
    client.connect(address.host, address.port, keepalive=60)  # its own process: may block
    client.loop_start()
    messages = []
    for k in range(n):
        j = k % len(codes)
        lon, lat = points[k % len(points)]
        body = {"lat": lat, "lon": lon, "ts": t0 + k * 0.001, "acc": 12}
        messages.append((f"agents/{codes[j]}/location", json.dumps(body).encode()))
    ready.set()
    go.wait()
    info = None
    for topic, payload in messages:
        info = client.publish(topic, payload, qos=1)  # OwnTracks' default; nothing dropped
    if info is not None:
        info.wait_for_publish(60)
    done.wait(120)
    client.disconnect()
    client.loop_stop()


class Counter:
    def __init__(self, target: int) -> None:
        self.target = target
        self.first = 0.0
        self.last = 0.0
        self.count = 0
        self.done = asyncio.Event()

    def add(self, k: int) -> None:
        if self.count == 0:
            self.first = time.perf_counter()
        self.count += k
        if self.count >= self.target:
            self.last = time.perf_counter()
            self.done.set()


async def one_run(label: str, consumer: Any, job: dict[str, Any]) -> float:
    n = job["n"]
    ctx = multiprocessing.get_context("spawn")
    ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=publisher, args=(job, ready, go, done))
    proc.start()
    counter = Counter(n)
    async with consumer(counter) as _:
        await asyncio.to_thread(ready.wait, 120)
        go.set()
        seen = -1
        while not counter.done.is_set() and counter.count != seen:  # stop when progress stops
            seen = counter.count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(counter.done.wait(), IDLE_S)
        if not counter.done.is_set():
            print(f"  {label}: only {counter.count:,} of {n:,} arrived")
        done.set()
        await asyncio.to_thread(proc.join, 60)
    seconds = (counter.last or time.perf_counter()) - counter.first
    value = rate(counter.count, seconds)
    print(f"  {label:<8} {counter.count:>8,} messages in {seconds:6.2f} s = {value:>10,.0f} msg/s")
    return value


async def through_broker(features: list[dict[str, Any]], n: int) -> None:
    print(f"\n== through the broker: {N_AGENTS:,} agents, {N_FENCES:,} fences, {n:,} messages")
    settings = load_settings()
    work = Path(tempfile.mkdtemp(prefix="gwbench-"))
    broker_proc, embedded = None, None
    mosquitto = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if mosquitto:
        broker_proc, port = await asyncio.to_thread(start_mosquitto, mosquitto, work)
        url = f"mqtt://127.0.0.1:{port}"
        print(f"broker: our own mosquitto on port {port}")
    elif settings.mqtt_url:
        url = settings.mqtt_url
        print("broker: MQTT_URL")
    else:
        embedded = EmbeddedMqtt(work, 0)
        url = await embedded.start()
        print("broker: embedded amqtt (in this process; expect far lower figures)")
    run_id = uuid.uuid4().hex[:8]
    tuned = replace(settings, data_dir=work, redis_prefix=f"gwbench:{run_id}:",
                    mqtt_share_group=f"bench{run_id}", agent_max_backlog_s=86_400)  # fmt: skip
    try:
        async with storage_endpoints(tuned) as ep:
            db_url = await create_database(ep.database_url, f"gw_bench_{run_id}")
            try:
                await measure(tuned, db_url, ep.redis_url, url, features=features, n=n)
            finally:
                await drop_database(ep.database_url, f"gw_bench_{run_id}")
    finally:
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(10)
        if embedded is not None:
            await embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


def start_mosquitto(binary: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    user = os.getenv("USER", "root")
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, port


async def create_database(server_url: str, name: str) -> str:
    admin = await asyncpg.connect(dbmod.asyncpg_url(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = dbmod.with_database(server_url, name)
    await dbmod.migrate(url)
    return url


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(dbmod.asyncpg_url(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def measure(
    settings: Any, db_url: str, redis_url: str, url: str, *, features: list[Any], n: int
) -> None:
    pool = await dbmod.make_pool(db_url, 2, 8)
    redis = make_redis(redis_url)
    codes = [f"BA{k:05d}" for k in range(N_AGENTS)]
    try:
        t = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO geofences (id, kind, geometry, radius_m) "
                "VALUES ($1, $2, $3::jsonb, $4)",
                [(i + 1, "circle" if f["geometry"]["type"] == "Point" else "polygon",
                  json.dumps(f["geometry"]), f["properties"].get("radius_m"))
                 for i, f in enumerate(features)],
            )  # fmt: skip
            step = N_FENCES // N_AGENTS
            await conn.executemany(
                "INSERT INTO agent_geofences (agent_code, geofence_id) VALUES ($1, $2)",
                [(c, k * step + 1) for k, c in enumerate(codes)],
            )
        runtime = build_runtime(settings, redis, pool)
        async with running(runtime):
            print(f"fences stored and catalog loaded in {time.perf_counter() - t:.2f} s "
                  f"({len(runtime.engine.catalog.fences):,} fences)")  # fmt: skip
            points = [point_near(features[(k % N_AGENTS) * step]) for k in range(N_AGENTS * 5)]
            t0 = time.time() - 3600

            def floor_consumer(counter: Counter) -> Any:
                async def handler(batch: list[Message]) -> None:
                    for m in batch:
                        json.loads(m.payload)
                    counter.add(len(batch))

                return mqtt_context(url, handler, settings.mqtt_share_group)

            def gateway_consumer(counter: Counter) -> Any:
                original = runtime.channel.handle

                async def handler(batch: list[Message]) -> None:
                    await original(batch)
                    counter.add(sum(1 for m in batch if m.topic.endswith("/location")))

                runtime.channel.handle = handler  # type: ignore[method-assign]
                return connected_ready(runtime, url)

            job = {"url": url, "codes": codes, "points": points, "n": n, "t0": t0}
            floors = [await one_run("floor", floor_consumer, job)]
            product = await one_run("gateway", gateway_consumer, job)
            floors.append(await one_run("floor", floor_consumer, job))
            floor = statistics.median(floors)
            stats = runtime.channel.stats
            print(f"gateway = {product / floor:.2f}x floor (target >= 0.5x: "
                  f"{'met' if product >= 0.5 * floor else 'NOT met'})")  # fmt: skip
            rejected = sum(v for k, v in stats.items() if k.startswith("rejected"))
            print(f"  accepted {stats['accepted']:,}, out of order {stats['out_of_order']:,}, "
                  f"rejected {rejected}")  # fmt: skip
        events = await pool.fetchval("SELECT count(*) FROM agent_events")
        history = await pool.fetchval("SELECT count(*) FROM agent_locations")
        print(f"  events recorded {events:,}; history rows written {history:,}")
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await redis.delete(*keys[i : i + 500])
        await redis.aclose()
        await pool.close()


class mqtt_context:
    def __init__(self, url: str, handler: Any, group: str) -> None:
        # Only the location topic: the floor parses what the gateway's fixes cost to parse.
        location = "agents/+/location"
        self.service = MqttService(
            url,
            handler,
            subscriptions=lambda v5: [f"$share/{group}/{location}" if v5 else location],
        )

    async def __aenter__(self) -> MqttService:
        await self.service.start()
        await self.service.wait_subscribed(30)
        return self.service

    async def __aexit__(self, *exc: Any) -> None:
        await self.service.stop()


class connected_ready:
    def __init__(self, runtime: Any, url: str) -> None:
        self.cm = connected(runtime, url)

    async def __aenter__(self) -> Any:
        service = await self.cm.__aenter__()
        await service.wait_subscribed(30)
        return service

    async def __aexit__(self, *exc: Any) -> None:
        await self.cm.__aexit__(*exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--decisions", type=int, default=200_000)
    args = parser.parse_args()
    versions = f"shapely {shapely.__version__}, numpy {np.__version__}"
    print(f"python {sys.version.split()[0]}, {versions}, {os.cpu_count()} CPUs")
    features = fence_features(N_FENCES)
    in_process(features, args.decisions)
    asyncio.run(through_broker(features, args.messages))


if __name__ == "__main__":
    main()
