"""The agent channel: MQTT messages in, device state advanced, events and replies out.

    owntracks/{code}/{dev}, agents/{code}/location -> parse -> DeviceEngine.apply (batched)
    agents/{code}/status (device, not retained)     -> presence
    agents/{code}/cmd                              -> CommandDispatcher -> agents/{code}/reply
    every event                                    -> EventSink (PostgreSQL), agents/{code}/events
    online / offline found by the gateway          -> agents/{code}/status (retained)

A bad payload is counted and logged (its agent and reason, never its content) and changes
nothing; a malformed command gets an error reply. The same `ingest` serves the OsmAnd HTTP
endpoint, so fixes from both paths meet in one state per agent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from channels.agents import topics
from channels.agents.commands import decode_command, encode_reply
from channels.agents.fixes import FixLimits
from channels.agents.mqtt import Message, MqttService
from channels.agents.native import parse_native_location
from channels.agents.owntracks import OwnTracksLocation, OwnTracksLwt, parse_owntracks
from channels.agents.owntracks_devices import OwnTracksDevices
from core.devices import EventRow, LocationRow
from core.errors import FixRejected
from core.tasks import stop_tasks
from menus.agent_commands import CommandDispatcher, CommandInvalid, reply_error
from menus.device import MAX_BATCH, DeviceEngine, DeviceInput, EngineResult, FixInput, PresenceInput

log = logging.getLogger("gateway.agents")

STATUS_WORDS = {b"online": True, b"offline": False}
MAX_CONCURRENT_COMMANDS = 32
# Presence changes the gateway found itself (not told by the device) are announced on status.
_ANNOUNCED_REASONS = frozenset({"fix", "heartbeat"})


class EventSink(Protocol):
    async def record_events(self, events: Sequence[EventRow]) -> int:
        """Store the events or defer them (PostgreSQL away); how many were deferred."""
        ...

    async def record_locations(self, rows: Sequence[LocationRow]) -> None: ...


def event_payload(event: EventRow) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": event.kind, "agent_code": event.agent_code, "at": event.at}
    if event.fence_id is not None:
        body["fence_id"], body["fence_version"] = event.fence_id, event.fence_version
    if event.fix_ts is not None:
        body["fix_ts"] = event.fix_ts
    if event.details:
        body.update({k: v for k, v in event.details.items() if k in ("fix", "decision", "reason")})
    return body


class AgentChannel:
    def __init__(
        self,
        engine: DeviceEngine,
        dispatcher: CommandDispatcher,
        sink: EventSink,
        limits: FixLimits,
        clock: Callable[[], float] = time.time,
        *,
        owntracks: OwnTracksDevices | None = None,
    ) -> None:
        self.engine = engine
        self.owntracks = owntracks
        # Called (in its own task) for an OwnTracks device the registry had not seen: the
        # gateway sends it the agent's zones.
        self.on_new_owntracks: Callable[[str, str], Coroutine[Any, Any, None]] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.dispatcher = dispatcher
        self.sink = sink
        self.limits = limits
        self.clock = clock
        self.mqtt: MqttService | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self._commands = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)

    # --- inbound ----------------------------------------------------------------------------

    async def handle(self, batch: list[Message]) -> None:
        """The MQTT handler: one call per batch of messages."""
        now = self.clock()
        items: list[DeviceInput] = []
        commands: list[tuple[str, bytes]] = []
        seen: set[tuple[str, str]] = set()
        for message in batch:
            inbound = topics.classify(message.topic)
            if inbound is None:
                self.stats["ignored"] += 1
                continue
            if inbound.kind is topics.Kind.CMD:
                commands.append((inbound.agent_code, message.payload))
                continue
            item = self._to_input(inbound, message, now)
            if item is not None:
                items.append(item)
                if inbound.device is not None:
                    seen.add((inbound.agent_code, inbound.device))
        if items:
            try:
                await self.ingest(items)
            except Exception:
                # Redis away: these fixes are lost (the next ones move the device on). The
                # batch's commands below must still be answered.
                self.stats["ingest_failed"] += 1
                log.exception("fixes not taken in", extra={"fixes": len(items)})
        if seen and self.owntracks is not None:
            await self._record_devices(seen, now)
        if commands:
            await asyncio.gather(*(self._command(c, p, now) for c, p in commands))

    async def _record_devices(self, seen: set[tuple[str, str]], now: float) -> None:
        assert self.owntracks is not None
        try:
            new = await self.owntracks.seen(sorted(seen), now)
        except Exception:  # the registry only aims waypoint pushes; ingest went on
            log.exception("recording owntracks devices failed")
            return
        hook = self.on_new_owntracks
        if hook is None:
            return
        for code, device in new:
            task = asyncio.create_task(hook(code, device), name="owntracks-new-device")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop_background(self) -> None:
        """Cancel the greetings still running (at shutdown)."""
        await stop_tasks(list(self._background), "owntracks device greetings")

    def _to_input(
        self, inbound: topics.Inbound, message: Message, now: float
    ) -> DeviceInput | None:
        code = inbound.agent_code
        item: DeviceInput | None = None
        try:
            if inbound.kind is topics.Kind.LOCATION:
                item = FixInput(code, parse_native_location(message.payload, now, self.limits), now)
            elif inbound.kind is topics.Kind.OWNTRACKS:
                parsed = parse_owntracks(message.payload, now, self.limits)
                if isinstance(parsed, OwnTracksLocation):
                    item = FixInput(code, parsed.fix, now)
                elif isinstance(parsed, OwnTracksLwt):
                    item = PresenceInput(code, False, now, "will")
            else:
                # A retained status is an old snapshot replayed on subscribe, not a change.
                online = STATUS_WORDS.get(message.payload.strip().lower())
                if online is not None and not message.retain:
                    item = PresenceInput(code, online, now, "status" if online else "will")
        except FixRejected as exc:
            self.stats[f"rejected:{exc.error_code}"] += 1
            log.info("fix rejected", extra={"agent": code, "reason": exc.error_code})
            return None
        except Exception:
            # A parser bug must cost this message only: raised out of here it dropped the
            # whole batch, every other agent's fixes with it.
            self.stats["rejected:UNREADABLE"] += 1
            log.exception("fix unreadable", extra={"agent": code, "topic": message.topic})
            return None
        if item is None:
            self.stats["ignored"] += 1
        return item

    async def ingest(self, items: Sequence[DeviceInput]) -> EngineResult:
        """Advance device state, record and announce what happened."""
        total = EngineResult()
        for start in range(0, len(items), MAX_BATCH):
            result = await self.engine.apply(items[start : start + MAX_BATCH])
            # The history first: it is queued and written whenever PostgreSQL is back, so it
            # must not be lost with events that could not be recorded.
            if result.locations:
                await self.sink.record_locations(result.locations)
            # The events happened (the device state in Redis moved on): announced and counted
            # even when PostgreSQL cannot record them now (the sink then defers them, to a
            # Redis spool any instance writes later, without holding this batch up), and the
            # rest of the batch goes on.
            self.announce(result.events)
            total.events += result.events
            total.locations += result.locations
            total.accepted += result.accepted
            total.dropped_out_of_order += result.dropped_out_of_order
            self.stats["accepted"] += result.accepted
            self.stats["out_of_order"] += result.dropped_out_of_order
            if result.events:
                try:
                    self.stats["events_deferred"] += await self.sink.record_events(result.events)
                except Exception:  # neither stored nor deferred: a bug, not an outage
                    self.stats["ingest_failed"] += 1
                    log.exception("agent events not recorded", extra={"events": len(result.events)})
        return total

    async def _command(self, agent_code: str, payload: bytes, now: float) -> None:
        async with self._commands:
            try:
                reply = await self.dispatcher.handle(agent_code, decode_command(payload), now)
            except CommandInvalid as exc:
                reply = reply_error(exc.command_id, exc.code, exc.message, exc.details)
            self.stats["commands"] += 1
            if reply is not None:
                self._publish(topics.reply_topic(agent_code), encode_reply(reply))

    # --- outbound ---------------------------------------------------------------------------

    def announce(self, events: Sequence[EventRow]) -> None:
        for event in events:
            body = json.dumps(event_payload(event), separators=(",", ":")).encode()
            self._publish(topics.events_topic(event.agent_code), body)
            reason = (event.details or {}).get("reason")
            if event.kind in ("online", "offline") and reason in _ANNOUNCED_REASONS:
                self._publish(
                    topics.status_topic(event.agent_code), event.kind.encode(), retain=True
                )

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self.mqtt is None:
            self.stats["unpublished"] += 1
            return
        self.mqtt.publish(topic, payload, qos=1, retain=retain)
