"""The gateway's MQTT client at a stop: every message paho took (and so acknowledged to the
broker) reaches the handler before the client goes, on a real broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.agents import mqtt
from channels.agents.mqtt import Message, MqttService
from tests.helpers import eventually
from tests.integration.mqtt_support import Device, private_broker

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
            # The first batch is held until the client is gone (disconnected, paho's thread
            # joined): everything else the broker sent waits in the inbox, acknowledged.
            await eventually(lambda: service is not None and service._client is None)
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
