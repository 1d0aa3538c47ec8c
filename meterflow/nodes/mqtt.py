"""MQTT: an ``mqtt-broker`` config node, ``mqtt-out`` (publish) and ``mqtt-in`` (subscribe).

::

    config:
      - id: broker
        type: mqtt-broker
        host: 127.0.0.1
        port: 1883
        username: meter
        password: ${creds:mqtt.password}
        client_id: meterflow-smt
        keepalive: 60s
        clean_session: true
        protocol: "3.1.1"          # or "5"
        tls: my-tls                # a tls-profile config node (optional)
        birth: {topic: smt/status, payload: online, retain: true}
        will:  {topic: smt/status, payload: offline, retain: true}
    nodes:
      - id: reading
        type: mqtt-out
        broker: broker
        topic: smt/reading         # a non-empty node topic beats msg.topic (as Node-RED)
        retain: true               # unset: msg.retain
        qos: 1                     # unset: msg.qos, else 0
        spool: spool               # optional: queued readings survive a restart
      - id: ha
        type: mqtt-in
        broker: broker
        topic: homeassistant/status
        datatype: auto             # auto | utf8 | json | buffer
        wires: [next]

Unlike Node-RED (which drops what ``mqtt out`` gets while the broker is down), every
publish goes through an outbox (:mod:`meterflow.outbox`): while disconnected messages
wait in a bounded queue (optionally spooled to disk) and leave in order after the
reconnect.  A QoS 1/2 message counts as delivered only on the broker's PUBACK/PUBCOMP
(paho's ``on_publish``), a QoS 0 one once written to the socket.  Payloads are encoded as
Node-RED does: ``None`` -> empty, bytes as they are, dicts and lists as JSON, numbers and
booleans as JavaScript prints them.

paho-mqtt 2.x runs on the engine's event loop (:mod:`meterflow.mqttloop`), not on a
thread per broker, so one process can hold thousands of connections; it reconnects with
a doubling, jittered delay between ``reconnect_min`` and ``reconnect_max``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import redact
from ..errors import ConfigError, ConnectError, FlowError, ParseError
from ..mqttloop import Link
from ..node import Node
from ..outbox import FIELDS as OUTBOX_FIELDS
from ..outbox import Item, Outbox, OutputNode, Retry, for_node, tls_context
from ..schema import Field, parse_duration

log = logging.getLogger("meterflow.node.mqtt-broker")

MESSAGE = Field("map", "a message the broker connection publishes itself", fields={
    "topic": Field("str", "topic", required=True),
    "payload": Field("any", "payload (text, number or JSON)", default=""),
    "qos": Field("int", "quality of service", choices=(0, 1, 2), default=0),
    "retain": Field("bool", "retain flag", default=False),
})

# paho's rc values we act on (paho.mqtt.client.MQTTErrorCode)
RC_SUCCESS, RC_NO_CONN, RC_QUEUE_SIZE = 0, 4, 15


def encode_payload(payload: Any) -> bytes | str:
    """Node-RED's encoding: null -> "", Buffer as-is, object -> JSON, else ``"" + value``."""
    if payload is None:
        return ""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, dict | list):
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if isinstance(payload, bool):
        return "true" if payload else "false"
    if isinstance(payload, float):
        if math.isnan(payload):
            return "NaN"
        if math.isinf(payload):
            return "Infinity" if payload > 0 else "-Infinity"
        return str(int(payload)) if payload.is_integer() and abs(payload) < 1e21 else repr(payload)
    return str(payload)


def valid_topic(topic: Any) -> bool:
    return isinstance(topic, str) and topic != "" and "+" not in topic and "#" not in topic


# ---- the broker connection --------------------------------------------------------------------
class MqttBroker(Node):
    type = "mqtt-broker"
    summary = "Connection to an MQTT broker (paho-mqtt 2.x), shared by mqtt-out / mqtt-in / ha-discovery"
    is_config = True
    schema = {
        "host": Field("str", "broker host name or address", default="localhost"),
        "port": Field("int", "broker port (default 1883, 8883 with tls)", minimum=1, maximum=65535),
        "tls": Field("ref", "tls-profile config node: connect with TLS", ref="tls-profile"),
        "username": Field("str", "user name"),
        "password": Field("str", "password, e.g. ${creds:mqtt.password}", secret=True),
        "client_id": Field("str", "client id (default: meterflow-<random>)"),
        "keepalive": Field("duration", "keep-alive interval", default=60.0),
        "clean_session": Field("bool", "start with a clean session (MQTT 5: clean start)", default=True),
        "protocol": Field("str", "MQTT protocol version", choices=("3.1", "3.1.1", "5"), default="3.1.1"),
        "reconnect_min": Field("duration", "first reconnect delay (doubles per attempt)", default=1.0),
        "reconnect_max": Field("duration", "longest reconnect delay", default=30.0),
        "max_inflight": Field("int", "QoS 1/2 messages awaiting acknowledgement at once", default=100, minimum=1),
        "birth": MESSAGE,
        "will": MESSAGE,
        "close": Field("map", "a message published before a clean disconnect", fields=MESSAGE.fields),
    }


    def setup(self) -> None:
        if self.config.get("password"):
            redact.add(self.config["password"])
        self.client = None
        self.link: Link | None = None
        self.connected = False
        self._pending: dict[int, tuple[asyncio.Future, int]] = {}  # mid -> (future, qos)
        self._listeners: list[Callable[[bool], None]] = []  # called with True/False on (dis)connect
        self._subs: dict[str, tuple[int, list[Callable[[Any], None]]]] = {}
        self._lost: asyncio.Future | None = None
        self._last_error: str | None = None
        self._ever_connected = False
        self._stopping = False
        self.generation = 0  # counts successful connections
        self.failed_attempts = 0

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        import paho.mqtt.client as mqtt

        c = self.config
        protocol = {"3.1": mqtt.MQTTv31, "3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}[c["protocol"]]
        client_id = c.get("client_id") or f"meterflow-{secrets.token_hex(4)}"
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = c["clean_session"]
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        client.max_inflight_messages_set(int(c["max_inflight"]))
        if c.get("username"):
            client.username_pw_set(c["username"], c.get("password"))
        if c.get("tls"):
            ctx = tls_context(self, c["tls"])
            client.tls_set_context(ctx)
        if c.get("will"):
            w = c["will"]
            client.will_set(w["topic"], encode_payload(w.get("payload")), w.get("qos", 0), w.get("retain", False))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        port = c.get("port") or (8883 if c.get("tls") else 1883)
        connect_kw: dict[str, Any] = {}
        if protocol == mqtt.MQTTv5:
            connect_kw["clean_start"] = c["clean_session"]
        keepalive = max(1, round(parse_duration(c["keepalive"])))
        client.connect_async(c["host"], port, keepalive=keepalive, **connect_kw)
        # The first connection is retried like any reconnect: a broker that is down at
        # start does not fail the flow.
        self.link = Link(client, keepalive, max(0.1, parse_duration(c["reconnect_min"])),
                         parse_duration(c["reconnect_max"]), self._failed)
        self.link.start()

    async def stop(self) -> None:
        client = self.client
        if client is None:
            return
        self._stopping = True
        close = self.config.get("close")
        if close and self.connected:
            try:
                await asyncio.wait_for(self.publish(close["topic"], encode_payload(close.get("payload")),
                                                    close.get("qos", 0), close.get("retain", False)), 2.0)
            except (TimeoutError, Retry, FlowError):
                pass
            except asyncio.CancelledError:  # the message was lost with the connection
                if asyncio.current_task().cancelling():
                    raise  # stop() itself was cancelled
        await self.link.stop()
        self.client = None
        self.connected = False
        for fut, _ in self._pending.values():
            fut.cancel()
        self._pending.clear()

    # ---- paho callbacks: called by paho on the event loop, inside its read/write handling,
    # so the work is deferred to a fresh loop iteration instead of re-entering paho.
    def _call(self, fn, *args) -> None:
        loop = self.link.loop if self.link is not None else None
        if loop is not None and not loop.is_closed():
            loop.call_soon(fn, *args)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._call(self._connected, not reason_code.is_failure, str(reason_code))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._call(self._disconnected, str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._call(self._acked, mid, reason_code.is_failure if hasattr(reason_code, "is_failure") else False,
                   str(reason_code))

    def _on_message(self, client, userdata, message) -> None:
        self._call(self._dispatch, message)

    # ---- event-loop side --------------------------------------------------------------------------
    def _where(self) -> str:
        c = self.config
        return f"{c['host']}:{c.get('port') or (8883 if c.get('tls') else 1883)}"

    def _connected(self, ok: bool, reason: str) -> None:
        if self.client is None:  # stopped meanwhile
            return
        if not ok:
            self._failed(f"broker refused the connection: {reason}")
            return
        self.connected = True
        self.generation += 1
        self.link.connected()
        self._last_error = None
        self.log.info("[%s] connected to %s%s", self.id, self._where(), " again" if self._ever_connected else "")
        self._ever_connected = True
        c = self.config
        client = self.client
        for topic, (qos, _) in self._subs.items():
            client.subscribe(topic, qos)
        if c.get("birth"):
            b = c["birth"]
            client.publish(b["topic"], encode_payload(b.get("payload")), b.get("qos", 0), b.get("retain", False))
        for listener in list(self._listeners):
            listener(True)

    def _failed(self, text: str) -> None:
        # One line per change of state, not one per reconnect attempt: no log flood.
        self.failed_attempts += 1
        if text != self._last_error:
            self.log.error("[%s] %s: %s; retrying with backoff", self.id, self._where(), redact.redact(text))
            self._last_error = text

    def _disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if was:
            level = logging.DEBUG if self._stopping else logging.WARNING
            self.log.log(level, "[%s] disconnected from %s: %s", self.id, self._where(), reason)
        # QoS 0 messages paho had not written yet are gone with the connection: send them again.
        for mid, (fut, qos) in list(self._pending.items()):
            if qos == 0:
                del self._pending[mid]
                fut.cancel()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._lost = None
        for listener in list(self._listeners):
            listener(False)

    def _acked(self, mid: int, failed: bool, reason: str) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        fut, _ = entry
        if fut.done():
            return
        if failed:
            fut.set_exception(FlowError(f"broker refused the message: {reason}", kind="mqtt"))
        else:
            fut.set_result(None)

    def _dispatch(self, message) -> None:
        from paho.mqtt.client import topic_matches_sub

        for sub, (_, callbacks) in self._subs.items():
            if topic_matches_sub(sub, message.topic):
                for cb in list(callbacks):
                    cb(message)

    # ---- what nodes use ----------------------------------------------------------------------
    def add_listener(self, fn: Callable[[bool], None]) -> None:
        self._listeners.append(fn)

    def connection_lost(self) -> asyncio.Future:
        """A future that completes at the next disconnect."""
        if self._lost is None or self._lost.done():
            self._lost = asyncio.get_running_loop().create_future()
        return self._lost

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> asyncio.Future:
        """Hand a message to paho; the future completes on ``on_publish`` (PUBACK for QoS 1).

        Raises :class:`Retry` when the message could not be queued (not connected)."""
        client = self.client
        if client is None or not self.connected:
            raise Retry(ConnectError(f"not connected to MQTT broker {self._where()}"))
        info = client.publish(topic, payload, qos, retain)
        if info.rc == RC_SUCCESS or (info.rc == RC_NO_CONN and qos > 0):
            # rc 4 with QoS>0: paho keeps it and sends it after the reconnect (§3.3).
            fut = asyncio.get_running_loop().create_future()
            self._pending[info.mid] = (fut, qos)
            return fut
        raise Retry(ConnectError(f"MQTT publish not queued (rc={info.rc})"))

    def subscribe(self, topic: str, qos: int, callback: Callable[[Any], None]) -> None:
        q, callbacks = self._subs.setdefault(topic, (qos, []))
        callbacks.append(callback)
        if self.client is not None and self.connected:
            self.client.subscribe(topic, qos)


# ---- publishing through an outbox ---------------------------------------------------------------
class MqttPublisher:
    """An outbox whose sink publishes ``{topic, payload | payload_b64, qos, retain}`` items in order."""

    def __init__(self, node: Node, broker: MqttBroker, batch: int = 100):
        self.node = node
        self.broker = broker
        self.window = max(batch, int(broker.config.get("max_inflight") or 100)) * 2
        self._inflight: deque[tuple[asyncio.Future, int]] = deque()  # (PUBACK future, connection generation)
        self.outbox: Outbox = for_node(node, self._sink, batch_size=batch,
                                       on_delivered=self._delivered, on_dropped=self._dropped)
        broker.add_listener(lambda up: self.outbox.kick() if up else None)

    @staticmethod
    def item(topic: str, payload: Any, qos: int, retain: bool) -> dict:
        data = encode_payload(payload)
        item: dict[str, Any] = {"topic": topic, "qos": qos, "retain": retain}
        if isinstance(data, bytes):
            item["payload_b64"] = base64.b64encode(data).decode("ascii")
        else:
            item["payload"] = data
        return item

    async def _sink(self, batch: list[Item]) -> None:
        """Hand the batch to paho and return without waiting for the PUBACKs (each item is
        done when its own ``on_publish`` arrives), so batches pipeline; wait only while more
        than ``window`` messages are unacknowledged, or raise Retry when the connection drops."""
        broker = self.broker
        if not broker.connected:
            # Still connecting after start is expected: the reconnect kicks the outbox.
            starting = not broker._ever_connected and broker._last_error is None
            raise Retry(ConnectError(f"not connected to MQTT broker {broker._where()}"), quiet=starting)
        inflight = self._inflight
        lost = broker.connection_lost()
        # After a reconnect paho resends what was unacknowledged from its own thread; a new
        # publish from here could overtake those, so let them be acknowledged first.
        while any(gen != broker.generation and not f.done() for f, gen in inflight):
            older = next(f for f, gen in inflight if gen != broker.generation and not f.done())
            await self._wait(older, lost)
        for item in batch:
            d = item.data
            payload = base64.b64decode(d["payload_b64"]) if "payload_b64" in d else d.get("payload", "")
            fut = broker.publish(d["topic"], payload, int(d.get("qos", 0)), bool(d.get("retain")))
            item.handed = True
            inflight.append((fut, broker.generation))
            fut.add_done_callback(lambda f, it=item: self._settled(it, f))
        while inflight and inflight[0][0].done():
            inflight.popleft()
        if len(inflight) > self.window:  # flow control, with hysteresis
            while len(inflight) > self.window // 2:
                await self._wait(inflight[0][0], lost)
                while inflight and inflight[0][0].done():
                    inflight.popleft()

    async def _wait(self, fut: asyncio.Future, lost: asyncio.Future) -> None:
        await asyncio.wait({fut, lost}, return_when=asyncio.FIRST_COMPLETED)
        if lost.done():
            # paho resends unacknowledged QoS 1/2 messages after the reconnect; they stay
            # handed and complete then.  QoS 0 ones come back to the outbox (release).
            raise Retry(ConnectError(f"connection to MQTT broker {self.broker._where()} lost"))

    def _settled(self, item: Item, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self.outbox.release(item)  # lost with the connection before it was sent: publish again
        elif fut.exception() is not None:
            self.outbox.fail(item, fut.exception())  # the broker refused it (an MQTT 5 reason code)
        else:
            self.outbox.mark_done(item)

    def _delivered(self, item: Item) -> None:
        if item.msg is not None:
            self.node.done(item.msg)

    def _dropped(self, item: Item, error: FlowError) -> None:
        if item.msg is not None:
            self.node.error(error, item.msg)


class MqttOut(OutputNode):
    type = "mqtt-out"
    summary = "Publish msg.payload to an MQTT topic; queued (and optionally spooled) while the broker is down"
    schema = {
        "broker": Field("ref", "mqtt-broker config node", ref="mqtt-broker", required=True),
        "topic": Field("str", "topic; when set it beats msg.topic", default=""),
        "qos": Field("int", "quality of service; unset: msg.qos, else 0", choices=(0, 1, 2)),
        "retain": Field("bool", "retain flag; unset: msg.retain"),
        **OUTBOX_FIELDS,
    }


    @classmethod
    def check(cls, config: dict) -> list:
        t = config.get("topic")
        if t and not valid_topic(t):
            return [(("topic",), "a topic to publish to cannot contain the wildcards + or #")]
        return []

    def setup(self) -> None:
        self.publisher = MqttPublisher(self, self.config_node(self.config["broker"]))
        self.outbox = self.publisher.outbox

    def on_input(self, msg: dict):
        if "payload" not in msg:
            self.done(msg)  # as Node-RED: nothing to publish
            return None
        c = self.config
        topic = c.get("topic") or msg.get("topic")
        if not valid_topic(topic):
            self.warn(f"Invalid topic specified: {topic!r}")
            self.done(msg)
            return None
        qos = c["qos"] if c.get("qos") is not None else msg.get("qos", 0)
        try:
            qos = int(qos or 0)
        except (TypeError, ValueError):
            qos = 0
        qos = qos if qos in (0, 1, 2) else 0
        retain = c["retain"] if c.get("retain") is not None else msg.get("retain", False)
        retain = retain is True or retain == "true"
        self.outbox.put(MqttPublisher.item(topic, msg["payload"], qos, retain), msg)
        return None


class MqttIn(Node):
    type = "mqtt-in"
    summary = "Subscribe to an MQTT topic (wildcards allowed); one message per publication"
    is_source = True
    schema = {
        "broker": Field("ref", "mqtt-broker config node", ref="mqtt-broker", required=True),
        "topic": Field("str", "topic filter (+ and # allowed)", required=True),
        "qos": Field("int", "subscription QoS", choices=(0, 1, 2), default=2),
        "datatype": Field("str", "payload as: auto (text, bytes when not UTF-8), utf8, json, buffer",
                          choices=("auto", "utf8", "json", "buffer"), default="auto"),
    }


    async def start(self) -> None:
        self.config_node(self.config["broker"]).subscribe(self.config["topic"], self.config["qos"], self._message)

    def _message(self, message) -> None:
        raw: bytes = message.payload
        msg: dict[str, Any] = {"topic": message.topic, "qos": message.qos, "retain": bool(message.retain)}
        dt = self.config["datatype"]
        if dt == "buffer":
            msg["payload"] = raw
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if dt == "json":
                try:
                    msg["payload"] = json.loads(text if text is not None else raw)
                except ValueError as e:
                    msg["payload"] = text if text is not None else raw
                    self.error(ParseError(f"payload on {message.topic} is not JSON: {e}"), msg)
                    return
            elif text is None and dt == "auto":
                msg["payload"] = raw
            else:
                msg["payload"] = text if text is not None else raw.decode("utf-8", "replace")
        self.send(msg)


def broker_of(node: Node) -> MqttBroker:
    b = node.config_node(node.config["broker"])
    if not isinstance(b, MqttBroker):
        raise ConfigError(f"{node.config['broker']!r} is not an mqtt-broker")
    return b


NODE_TYPES = [MqttBroker, MqttOut, MqttIn]
