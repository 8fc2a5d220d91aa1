"""The gateway's MQTT client at a stop: every message paho took (and so acknowledged to the
broker) reaches the handler before the client goes, on a real broker."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.agents import mqtt
from channels.agents.mqtt import Message, MqttService, Session
from tests.helpers import eventually
from tests.integration.mqtt_support import Device, private_broker

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "stoptest/{n}/in"
COUNT = 300


@pytest.fixture
async def broker_url(tmp_path: Path) -> AsyncIterator[str]:
    async with private_broker(tmp_path) as url:
        yield url


async def started(url: str, handler: mqtt.Handler) -> MqttService:
    service = MqttService(url, handler, subscriptions=lambda _: ["stoptest/+/in"])
    await service.start()
    await service.wait_subscribed(10)
    return service


async def publish_all(url: str) -> None:
    device = Device(url)
    await device.connect()
    try:
        for i in range(COUNT):
            device.publish(TOPIC.format(n=i % 7), str(i).encode())
        await eventually(lambda: len(device.pub_results) == COUNT)  # the broker has them all
    finally:
        await device.stop()


async def test_a_stop_hands_the_handler_every_message_it_took(broker_url: str) -> None:
    handled: list[int] = []
    in_hand: list[int] = []
    service: MqttService | None = None

    async def handler(batch: list[Message]) -> None:
        if not in_hand:
            in_hand.append(len(batch))
            # The first batch is held until the stop has unsubscribed: everything else the
            # broker sent waits in the inbox, acknowledged.
            await eventually(
                lambda: service is not None and service._closing and service._unsubscribed.is_set()
            )
        handled.extend(int(m.payload) for m in batch)

    service = await started(broker_url, handler)
    await publish_all(broker_url)
    await eventually(lambda: bool(in_hand) and in_hand[0] + service.pending == COUNT)
    assert service.pending > 0
    await service.stop()
    assert sorted(handled) == list(range(COUNT))


async def test_a_stop_does_not_wait_for_ever_on_a_hung_handler(
    broker_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mqtt, "STOP_TIMEOUT_S", 0.5)
    hung = asyncio.Event()

    async def handler(batch: list[Message]) -> None:
        await hung.wait()  # never set

    service = await started(broker_url, handler)
    await publish_all(broker_url)
    await eventually(lambda: service.pending > 0)
    with caplog.at_level(logging.WARNING, logger="gateway.mqtt"):
        async with asyncio.timeout(5):
            await service.stop()
    assert "were not handled in time" in caplog.text
    assert not service.connected


# --- a session that outlives the process ------------------------------------------------------

# A gateway process that takes messages and dies before it has handled them: its handler says
# what it holds and then hangs, and the test kills the process.
CRASHING_GATEWAY = """
import asyncio, sys
from channels.agents.mqtt import MqttService, Session

async def main() -> None:
    async def handler(batch):
        print("holding", *[m.payload.decode() for m in batch], flush=True)
        await asyncio.Event().wait()

    service = MqttService(
        sys.argv[1], handler, subscriptions=lambda _: ["crashtest/+/cmd"],
        session=Session(sys.argv[2]) if sys.argv[2] else None,
    )
    await service.start()
    await service.wait_subscribed(10)
    print("subscribed", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def crashing_gateway(url: str, client_id: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_GATEWAY,
        url,
        client_id,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        assert await proc.stdout.readline() == b"subscribed\n"
    return proc


async def publish(url: str, *payloads: str, topic: str = "crashtest/a1/cmd") -> None:
    device = Device(url)
    await device.connect()
    try:
        for payload in payloads:
            device.publish(topic, payload.encode())
        await eventually(lambda: len(device.pub_results) == len(payloads))  # the broker has them
    finally:
        await device.stop()


class Collector:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    async def __call__(self, batch: list[Message]) -> None:
        self.payloads.extend(m.payload.decode() for m in batch)


async def with_session(url: str, client_id: str | None, handler: mqtt.Handler) -> MqttService:
    """A started client under `client_id` with a session, or (None) the default: a clean
    session under a new id."""
    session = Session(client_id) if client_id is not None else None
    service = MqttService(
        url, handler, subscriptions=lambda _: ["crashtest/+/cmd"], session=session
    )
    await service.start()
    await service.wait_subscribed(10)
    return service


async def after_restart(url: str, client_id: str | None) -> list[str]:
    """What a client started again under `client_id` receives up to a marker published after
    it subscribed: whatever its session still held comes first."""
    received = Collector()
    service = await with_session(url, client_id, received)
    try:
        await publish(url, "marker")
        await eventually(lambda: "marker" in received.payloads)
    finally:
        await service.stop()
    return received.payloads


@pytest.mark.parametrize("durable", [True, False], ids=["session", "clean"])
async def test_a_command_taken_by_a_process_that_dies_is_handled_after_the_restart(
    broker_url: str, durable: bool
) -> None:
    client_id = f"gw-crash-{uuid.uuid4().hex[:8]}"
    proc = await crashing_gateway(broker_url, client_id if durable else "")
    try:
        await publish(broker_url, "cash-in-1")
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            assert await proc.stdout.readline() == b"holding cash-in-1\n"
    finally:
        proc.kill()
        await proc.wait()
    # With a session the command the dead process held comes again, ahead of what followed;
    # with a clean one (paho acknowledged it when it read it) it is gone.
    restarted = await after_restart(broker_url, client_id if durable else None)
    assert restarted == (["cash-in-1", "marker"] if durable else ["marker"])


async def test_a_stop_acknowledges_what_it_handled_so_a_restart_gets_nothing_twice(
    broker_url: str,
) -> None:
    client_id = f"gw-stop-{uuid.uuid4().hex[:8]}"
    handled = Collector()
    service: MqttService | None = None
    first: list[int] = []

    async def handler(batch: list[Message]) -> None:
        if not first:
            first.append(len(batch))
            # Held until the stop has begun: the rest waits in the inbox, unacknowledged.
            await eventually(
                lambda: service is not None and service._closing and service._unsubscribed.is_set()
            )
        await handled(batch)

    service = await with_session(broker_url, client_id, handler)
    # Fewer than the broker sends unacknowledged at once (Mosquitto: 20 by default).
    await publish(broker_url, *(f"c{i}" for i in range(15)))
    await eventually(lambda: bool(first) and first[0] + service.pending == 15)
    await service.stop()
    assert sorted(handled.payloads) == sorted(f"c{i}" for i in range(15))
    assert service.acked == 15
    # Nothing the first run handled comes back.
    assert await after_restart(broker_url, client_id) == ["marker"]


async def test_what_a_hung_handler_held_at_a_stop_is_not_acknowledged(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt, "STOP_TIMEOUT_S", 0.5)
    client_id = f"gw-hung-{uuid.uuid4().hex[:8]}"
    held: list[str] = []

    async def hung(batch: list[Message]) -> None:
        held.extend(m.payload.decode() for m in batch)
        await asyncio.Event().wait()  # never set: the stop gives up and cancels it

    service = await with_session(broker_url, client_id, hung)
    await publish(broker_url, "c1", "c2", "c3")
    await eventually(lambda: len(held) + service.pending == 3)
    await service.stop()
    assert service.acked == 0
    # The broker's again, in order.
    assert await after_restart(broker_url, client_id) == ["c1", "c2", "c3", "marker"]
