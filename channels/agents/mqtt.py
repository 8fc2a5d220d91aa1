"""One MQTT client for the gateway: paho-mqtt 2.x (CallbackAPIVersion.VERSION2) on its own network
thread, handing messages to asyncio without ever blocking the event loop.

Why a thread: paho's blocking `connect()` on the loop thread would wait for a CONNACK that an
in-process broker (the embedded amqtt) can only send from that same loop. `connect_async` +
`loop_start` keeps all socket work on paho's thread; messages cross to the loop through a bounded
inbox (`max_inflight`): when the gateway falls behind, paho's thread waits for room, stops
reading its socket and TCP pushes back on the broker, instead of a queue growing without end.
A drain task hands the inbox to the handler in batches (`MAX_BATCH`), which is what lets the
handler use one Redis round trip for many fixes.

On start the broker is probed with a raw MQTT 5 CONNECT: one that answers in MQTT 5 gets a v5
client and shared subscriptions (`$share/{group}/...`, so several gateway instances split the
traffic); one that only speaks 3.1.1 (amqtt) gets plain subscriptions. paho reconnects with
exponential backoff (1 s to `RECONNECT_MAX_S`); every (re)connection subscribes again, since a
restarted broker has forgotten its subscriptions.

A stop loses nothing it took. The stop first unsubscribes (the broker then routes the topics
to the share group's other instances; with none, what devices publish meanwhile reaches no one,
as while the gateway is down) and waits for the UNSUBACK, which paho reads after every message
the broker sent before it; then it hands the handler everything the inbox holds (bounded by
`STOP_TIMEOUT_S`; what a hung handler leaves is counted in a warning) and disconnects.

A crash loses nothing either when the service has a `Session` (a client id of its own, fixed
across restarts: `MQTT_CLIENT_ID`). By default paho acknowledges a QoS 1 message (PUBACK) when
it reads it, and the session is clean, so what the inbox held when the process died is gone
for good (a cash-in command the broker will never send again). With a `Session` the broker
keeps the session while the process is away (`expiry_s`, MQTT 5; a 3.1.1 broker keeps it until
the client comes back), and each message is acknowledged only after the handler has had it, in
the order it came: a message taken and not yet handled is still the broker's, sent again when
the client reconnects under the same id (at least once: a command is idempotent by its id; a
fix no newer than the last accepted one is dropped). The price is the broker's in-flight limit
per client (Mosquitto's `max_inflight_messages`, 20 by default): at most that many
unacknowledged messages reach the inbox at once. An acknowledgement belongs to its
connection: a message taken before a reconnect is not acknowledged on the new one (the broker
sends it again with the session, and that copy is).

`publish` queues and returns; `publish_acked` waits for the broker's PUBACK, so a caller that
must know (a waypoint push, retried on the device's next sighting when it failed) learns that
the message was not queued, was refused (an MQTT 5 reason code, e.g. an ACL's "not
authorized") or was not acknowledged in time. PUBACKs cross from paho's thread to the loop
like messages do; the future for a message id is registered before the loop can run the
acknowledgement, so no lock is shared with paho's (which holds its own while calling back).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger("gateway.mqtt")

PROBE_TIMEOUT_S = 3.0
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
KEEPALIVE_S = 30
# Fixes handed to the handler at once. Its work between awaits grows with the batch and holds
# every other answer of this process (USSD included) meanwhile: under a flood 100 holds it a
# fifth as long as 500 did, at the same throughput (bench/agents.py: 5,798 against 5,923/s).
MAX_BATCH = 100
COALESCE_S = 0.002
MAX_INFLIGHT = 5000
MAX_QUEUED_OUT = 10_000
INBOX_WAIT_S = 0.5
STOP_TIMEOUT_S = 5.0
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    """A broker session that outlives the process (see the module docstring). `client_id`
    must be this instance's own: two clients with one id take the session from each other."""

    client_id: str
    expiry_s: int = 3600


Handler = Callable[[list[Message]], Awaitable[None]]


class PublishFailed(Exception):
    """The broker did not take a message (see `MqttService.publish_acked`)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"{reason}: {topic}")
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


def _v5_connect_packet(client_id: str) -> bytes:
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x05\x02" + (10).to_bytes(2, "big") + b"\x00"
    body = variable + len(ident).to_bytes(2, "big") + ident
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


async def speaks_mqtt5(address: BrokerAddress, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the broker answers an MQTT 5 CONNECT in MQTT 5. A 3.1.1-only broker answers
    with a two-byte CONNACK "unacceptable protocol version" (or hangs up)."""
    ctx = ssl.create_default_context() if address.tls else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, ssl=ctx), timeout_s
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_v5_connect_packet(f"probe-{uuid.uuid4().hex[:12]}"))
        await asyncio.wait_for(writer.drain(), timeout_s)
        head = await asyncio.wait_for(reader.read(4), timeout_s)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), timeout_s)
    if len(head) < 2 or head[0] != 0x20:
        return False
    return not (head[1] == 2 and len(head) >= 4 and head[3] == 0x01)


class MqttService:
    """Connects, (re)subscribes, receives in batches and publishes; see the module docstring."""

    def __init__(
        self,
        url: str,
        handler: Handler,
        *,
        subscriptions: Callable[[bool], Sequence[str]],
        client_id_prefix: str = "gateway",
        max_inflight: int = MAX_INFLIGHT,
        session: Session | None = None,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.handler = handler
        self._subscriptions = subscriptions
        self.session = session
        self.client_id = (
            session.client_id if session else f"{client_id_prefix}-{uuid.uuid4().hex[:12]}"
        )
        self.mqtt5 = False
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # (message, packet id to acknowledge after handling or 0, connection it came on)
        self._inbox: collections.deque[tuple[Message, int, int]] = collections.deque()
        self._connection = 0  # counts CONNACKs on paho's thread; read on the loop
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._kick_pending = False
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._stopping = threading.Event()
        self._closing = False  # a stop has begun: a disconnect is expected, not a fault
        self._unsubscribed = asyncio.Event()
        self._drained = asyncio.Event()  # the drain ran out of messages
        self._handling = False
        self._drain_task: asyncio.Task[None] | None = None
        self._acks: dict[int, asyncio.Future[int]] = {}
        self.connections = 0  # successful CONNACKs so far (reconnects show as > 1)
        self.received = 0
        self.acked = 0  # acknowledged after handling (with a Session)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.mqtt5 = await speaks_mqtt5(self.address)
        durable = self.session is not None
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.mqtt5 else not durable,
            reconnect_on_failure=True,
            manual_ack=durable,
        )
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(MAX_QUEUED_OUT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        # Without a Session, clean sessions: the client id is new on every start, so a session
        # the broker kept for it would only be a ghost in the share group, hoarding its turn of
        # every agent's messages. The other instances of the group take the traffic while one
        # reconnects. With one, the same id comes back and takes its session up again.
        properties = None
        if self.session is not None and self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session.expiry_s
        client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=KEEPALIVE_S,
            clean_start=not durable,
            properties=properties,
        )
        self._client = client
        self._drain_task = asyncio.create_task(self._drain(), name="mqtt-drain")
        client.loop_start()
        log.info(
            "mqtt client started",
            extra={"broker": f"{self.address.host}:{self.address.port}", "mqtt5": self.mqtt5},
        )

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def wait_subscribed(self, timeout_s: float) -> None:
        """Until the broker has acknowledged this connection's subscriptions."""
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Messages taken from the broker and not yet handed to the handler."""
        return len(self._inbox)

    @property
    def subscribed(self) -> bool:
        """The broker acknowledged this connection's subscriptions (cleared on a drop)."""
        return self._subscribed.is_set()

    async def stop(self) -> None:
        """Unsubscribe, disconnect, and hand the handler what was already taken (see the module
        docstring), then end the drain."""
        self._closing = True
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_S
        client = self._client
        if client is not None:
            if self.connected:
                await self._unsubscribe(client, deadline)
            # Handled while still connected, so that a Session's acknowledgements go out
            # (queued before the DISCONNECT, they are sent ahead of it).
            await self._finish_inbox(deadline)
            client.disconnect()
            # The drain keeps running meanwhile: paho's thread may be waiting in _on_message
            # for room in a full inbox, and only the drain makes room.
            joined = asyncio.ensure_future(asyncio.to_thread(client.loop_stop))
            stopped, _ = await asyncio.wait({joined}, timeout=self._left(deadline))
            if not stopped:
                self._stopping.set()  # a hung handler: _on_message gives up waiting for room
                await joined
            self._client = None
        else:
            await self._finish_inbox(deadline)
        self._stopping.set()
        if self._drain_task is not None:
            # The stop flag and a wake-up end the drain even when its cancellation is lost:
            # on Python 3.11 a wait_for/timeout inside the handler can swallow it (gh-86296),
            # and awaiting the task then waited for ever (seen as a hung app teardown).
            self._wake.set()
            self._drain_task.cancel()
            done, _ = await asyncio.wait({self._drain_task}, timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning("mqtt drain did not stop in time")
        self._connected.clear()
        for mid, waiter in list(self._acks.items()):
            if not waiter.done():
                waiter.set_exception(PublishFailed(f"message {mid}", "client stopped"))
        self._acks.clear()

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())

    async def _unsubscribe(self, client: paho.Client, deadline: float) -> None:
        self._unsubscribed.clear()
        rc, _ = client.unsubscribe(list(self._subscriptions(self.mqtt5)))
        if rc != paho.MQTT_ERR_SUCCESS:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unsubscribed.wait(), self._left(deadline))

    async def _finish_inbox(self, deadline: float) -> None:
        """Until the drain has handed every message in the inbox to the handler."""
        task = self._drain_task
        while (self._inbox or self._handling) and task is not None and not task.done():
            self._drained.clear()
            self._wake.set()
            try:
                await asyncio.wait_for(self._drained.wait(), self._left(deadline))
            except TimeoutError:
                log.warning(
                    "mqtt stop: messages taken from the broker were not handled in time",
                    extra={"messages": len(self._inbox)},
                )
                return

    # --- paho's thread ----------------------------------------------------------------------

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt connection refused", extra={"reason": str(reason)})
            return
        options = SubscribeOptions(qos=1) if self.mqtt5 else None
        topics = list(self._subscriptions(self.mqtt5))
        if options is not None:
            client.subscribe([(t, options) for t in topics])
        else:
            client.subscribe([(t, 1) for t in topics])
        self.connections += 1
        self._connection += 1  # before any message of this connection reaches _on_message
        self._call_in_loop(self._connected.set)
        log.info("mqtt connected", extra={"subscriptions": topics, "connections": self.connections})

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("mqtt subscriptions refused", extra={"reasons": failed})
            return
        self._call_in_loop(self._subscribed.set)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._call_in_loop(self._acked, mid, int(getattr(reason, "value", 0)))

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._call_in_loop(self._unsubscribed.set)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._call_in_loop(self._connected.clear)
        self._call_in_loop(self._subscribed.clear)
        if not self._closing:
            log.warning("mqtt disconnected; reconnecting", extra={"reason": str(reason)})

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        while not self._slots.acquire(timeout=INBOX_WAIT_S):
            if self._stopping.is_set():
                return
        mid = msg.mid if self.session is not None and msg.qos > 0 else 0
        self._inbox.append(
            (Message(msg.topic, bytes(msg.payload), bool(msg.retain)), mid, self._connection)
        )
        if not self._kick_pending:
            self._kick_pending = True
            self._call_in_loop(self._kick)

    # --- the event loop -------------------------------------------------------------------

    def _kick(self) -> None:
        self._kick_pending = False
        self._wake.set()

    async def _drain(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            if self._stopping.is_set():
                return
            if len(self._inbox) < MAX_BATCH:
                # Let a trickle become a batch: one Redis round trip then serves many fixes.
                await asyncio.sleep(COALESCE_S)
            self._wake.clear()
            while self._inbox:
                taken = [self._inbox.popleft() for _ in range(min(MAX_BATCH, len(self._inbox)))]
                batch = [message for message, _, _ in taken]
                self._handling = True
                try:
                    await self.handler(batch)
                except Exception:
                    log.exception("mqtt batch handler failed", extra={"messages": len(batch)})
                finally:
                    self._handling = False
                    self.received += len(batch)
                    for _ in batch:
                        self._slots.release()
                # Not reached when the drain is cancelled mid-batch (a stop that gave up on a
                # hung handler): what it held stays unacknowledged, the broker's to send again.
                self._ack(taken)
            self._drained.set()

    def _ack(self, taken: list[tuple[Message, int, int]]) -> None:
        """A Session's acknowledgements, in arrival order, for what came on this connection.
        A handler that failed is acknowledged too: sending it again would fail again."""
        client = self._client
        if client is None or self.session is None:
            return
        current = self._connection
        for _, mid, connection in taken:
            if mid and connection == current:
                client.ack(mid, 1)
                self.acked += 1

    def _acked(self, mid: int, code: int) -> None:
        waiter = self._acks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(code)

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement. PublishFailed when the
        client is not running, paho would not queue it, the broker refused it (MQTT 5 reason
        code 0x80 or above) or no PUBACK came within `timeout_s` (paho sends it again after a
        reconnect in the meantime). A 3.1.1 broker that drops a message its ACL denies still
        acknowledges it: only MQTT 5 reports the refusal."""
        client = self._client
        if client is None or self._loop is None:
            raise PublishFailed(topic, "client not running")
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise PublishFailed(topic, f"not queued ({paho.error_string(info.rc)})")
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._acks[info.mid] = waiter  # before the loop can run the PUBACK's _acked
        try:
            code = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise PublishFailed(topic, "no acknowledgement") from None
        finally:
            if self._acks.get(info.mid) is waiter:
                del self._acks[info.mid]
        if code >= 0x80:
            raise PublishFailed(topic, f"refused by the broker (reason code {code:#04x})")

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message (paho sends it from its thread, and again after a reconnect)."""
        client = self._client
        if client is None:
            raise RuntimeError("the MQTT client is not running")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("mqtt publish not queued", extra={"topic": topic, "rc": int(info.rc)})
