"""MQTT against Debian's mosquitto: retained readings reach a subscriber, Node-RED's
topic/qos/retain precedence and payload encoding, mqtt-in, a broker outage in the middle of
1,000 QoS 1 messages (none lost, order kept), and the disk spool across an engine restart."""

import asyncio
import json
import logging
import os
import time

import pytest
from services import Subscriber, broker_yaml, until

from meterflow.nodes.mqtt import encode_payload
from meterflow.testing import Harness

paho = pytest.importorskip("paho.mqtt.client")

OUTAGE = float(os.environ.get("METERFLOW_TEST_MQTT_OUTAGE", "10"))  # seconds the broker is down


def test_payload_encoding_follows_node_red():
    assert encode_payload(None) == ""
    assert encode_payload(b"\x00\x01") == b"\x00\x01"
    assert encode_payload({"a": 1, "b": [True, None]}) == '{"a":1,"b":[true,null]}'
    assert encode_payload(12.0) == "12" and encode_payload(0.5) == "0.5" and encode_payload(7) == "7"
    assert encode_payload(True) == "true" and encode_payload(float("nan")) == "NaN"


async def test_retained_reading_reaches_a_subscriber(mosquitto):
    text = "meterflow: 1\n" + broker_yaml(mosquitto.port) + """nodes:
  - id: reading
    type: mqtt-out
    broker: broker
    topic: smt/reading
    retain: true
    qos: 1
  - id: free
    type: mqtt-out
    broker: broker
  - id: done
    type: complete
    scope: [reading]
    wires: [seen]
  - id: seen
    type: debug
    active: false
"""
    async with Harness(text=text) as h:
        await h.send("reading", {"payload": 1234.5, "topic": "ignored/topic"})   # node topic wins
        await h.send("free", {"payload": {"kwh": 1.5}, "topic": "smt/json", "retain": True, "qos": 1})
        await h.send("free", {"payload": "x", "topic": "bad/+/topic"})           # invalid: warned, not sent
        out = h.node("reading").outbox
        await until(lambda: out.delivered == 1 and h.node("free").outbox.delivered == 1, what="PUBACKs")
        assert h.payloads("seen") == [1234.5]  # complete fires once the broker acknowledged
        assert (out.stats()["queued"], out.stats()["dropped"]) == (0, 0)
    sub = Subscriber(mosquitto.port, "smt/#")
    try:
        await until(lambda: len(sub.got) >= 2, what="retained messages")
        assert sorted(sub.got) == [("smt/json", b'{"kwh":1.5}', True), ("smt/reading", b"1234.5", True)]
    finally:
        sub.close()


async def test_mqtt_in_parses_json_and_keeps_topic(mosquitto):
    text = "meterflow: 1\n" + broker_yaml(mosquitto.port) + """nodes:
  - id: in
    type: mqtt-in
    broker: broker
    topic: meter/in/#
    datatype: json
    wires: [seen]
  - id: seen
    type: debug
    active: false
"""
    async with Harness(text=text) as h:
        broker = h.node("broker")
        await until(lambda: broker.connected, what="connection")
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            await asyncio.sleep(0.3)  # let the SUBSCRIBE sent on connect land first
            pub.publish("meter/in/a", json.dumps({"kwh": 3}), qos=1).wait_for_publish(2)
            await until(lambda: len(h.messages("seen")) == 1, what="mqtt-in message")
        finally:
            pub.disconnect()
            pub.loop_stop()
        m = h.messages("seen")[0]
        assert (m["topic"], m["payload"], m["qos"], m["retain"]) == ("meter/in/a", {"kwh": 3}, 1, False)


async def test_broker_outage_in_the_middle_of_1000_qos1_messages_loses_nothing(mosquitto_factory):
    broker = mosquitto_factory(persistent=True)
    # A persistent subscriber session: the broker keeps its subscription across its restart.
    sub = Subscriber(broker.port, "meter/seq", client_id="outage-sub", clean=False)
    text = "meterflow: 1\n" + broker_yaml(broker.port, keepalive="2s") + """nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/seq
    qos: 1
"""
    try:
        async with Harness(text=text) as h:
            out = h.node("out").outbox
            for i in range(500):
                h.inject("out", {"payload": i})
            await until(lambda: out.delivered >= 200, what="first deliveries")
            broker.stop()
            t_down = time.monotonic()
            for i in range(500, 1000):
                h.inject("out", {"payload": i})
            await h.settle()
            await until(lambda: not h.node("broker").connected, what="disconnect")
            assert out.stats()["queued"] > 0
            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - t_down)))
            assert out.delivered < 1000
            broker.start()
            await until(lambda: out.delivered == 1000, timeout=20, what="all 1000 delivered after the restart")
            assert out.dropped == 0 and out.retried > 0
        try:
            await until(lambda: len({p for _, p, _ in sub.got}) == 1000, timeout=10, what="subscriber to get 1000")
        except AssertionError:
            got = {int(p) for _, p, _ in sub.got}
            missing = sorted(set(range(1000)) - got)
            raise AssertionError(f"missing {len(missing)}: {missing[:5]}..{missing[-5:]}, got {len(sub.got)}") from None
    finally:
        sub.close()
    seen = [int(p) for _, p, _ in sub.got]
    first = list(dict.fromkeys(seen))  # QoS 1 is at-least-once: drop redeliveries, keep first arrival order
    assert first == list(range(1000))


async def test_spooled_messages_are_published_by_the_next_engine(mosquitto, tmp_path):
    file = str(tmp_path / "flow.yaml")
    nodes = """nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/spooled
    qos: 1
    retain: true
    spool: spool
    drain: 0.2s
"""
    down = "meterflow: 1\n" + broker_yaml(1) + nodes  # nothing listens on port 1
    async with Harness(text=down, file=file) as h:
        for i in range(3):
            await h.send("out", {"payload": f"reading {i}"})
        assert h.node("out").outbox.stats()["queued"] == 3
    assert len((tmp_path / "spool" / "out.jsonl").read_text().splitlines()) == 3

    up = "meterflow: 1\n" + broker_yaml(mosquitto.port) + nodes
    async with Harness(text=up, file=file) as h:
        out = h.node("out").outbox
        await until(lambda: out.delivered == 3, what="replayed messages")
    sub = Subscriber(mosquitto.port, "meter/spooled")
    try:
        await until(lambda: len(sub.got) == 1)
        assert sub.got == [("meter/spooled", b"reading 2", True)]  # the last retained one
    finally:
        sub.close()


def secured_flow(port: int, ca_path, password: str) -> str:
    return f"""meterflow: 1
config:
  - id: ca
    type: tls-profile
    ca: {ca_path}
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: {port}
    tls: ca
    username: meter
    password: "{password}"
    reconnect_min: 1s
    reconnect_max: 1s
nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/secure
    qos: 1
    drain: 0.1s
"""


async def test_tls_profile_and_login(mosquitto_factory, certs):
    broker = mosquitto_factory(users={"meter": "mqtt-pass-123"}, tls=certs)
    async with Harness(text=secured_flow(broker.port, certs.ca_path, "${MQTT_PASSWORD}"),
                       env={"MQTT_PASSWORD": "mqtt-pass-123"}) as h:
        await h.send("out", {"payload": 42})
        await until(lambda: h.node("out").outbox.delivered == 1, what="PUBACK over TLS")


async def test_refused_login_is_one_clear_error_and_nothing_is_lost(mosquitto_factory, certs, caplog):
    broker = mosquitto_factory(users={"meter": "mqtt-pass-123"}, tls=certs)
    with caplog.at_level(logging.INFO, logger="meterflow"):
        async with Harness(text=secured_flow(broker.port, certs.ca_path, "wrong-pass-456")) as h:
            for i in range(2):
                await h.send("out", {"payload": i})
            await asyncio.sleep(2.5)  # a few reconnect attempts, one second apart
            assert h.node("out").outbox.stats()["queued"] == 2
            assert h.node("broker").failed_attempts >= 2  # it keeps trying, quietly
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "broker" in r.name]
    assert len(errors) == 1 and "refused" in errors[0], errors
    assert "wrong-pass-456" not in caplog.text


async def test_mqtt5_with_birth_and_will(mosquitto):
    sub = Subscriber(mosquitto.port, "meter/v5/#")
    text = "meterflow: 1\n" + broker_yaml(mosquitto.port, protocol='"5"', birth="{topic: meter/v5/status, payload: online}",
                                          will="{topic: meter/v5/status, payload: offline}") + """nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/v5/reading
    qos: 2
"""
    try:
        async with Harness(text=text) as h:
            await h.send("out", {"payload": {"kwh": 7}})
            await until(lambda: h.node("out").outbox.delivered == 1, what="PUBCOMP")
            await until(lambda: len(sub.got) == 2)
    finally:
        sub.close()
    assert [(t, p) for t, p, _ in sub.got] == [("meter/v5/status", b"online"), ("meter/v5/reading", b'{"kwh":7}')]


async def test_brokers_past_file_number_1024_deliver_without_a_thread_each(mosquitto):
    """paho's own thread loop waits in select(), which fails for file numbers >= 1024; an
    aggregator with hundreds of meters in one process got there.  Fill the low numbers,
    then run 20 brokers: every reading arrives, and no thread was started per broker."""
    import resource
    import threading

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        pytest.skip(f"needs 1400 open files, the limit is {soft}")
    sub = Subscriber(mosquitto.port, "meter/fd/#")  # a paho thread itself: before the filling
    filler = []
    while not filler or filler[-1] < 1030:
        filler.append(os.open(os.devnull, os.O_RDONLY))
    config = "".join(f"""  - id: broker{i}
    type: mqtt-broker
    host: 127.0.0.1
    port: {mosquitto.port}
""" for i in range(20))
    nodes = "".join(f"""  - id: out{i}
    type: mqtt-out
    broker: broker{i}
    topic: meter/fd/{i}
    qos: 1
""" for i in range(20))
    def paho_threads():
        return [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]

    try:
        async with Harness(text=f"meterflow: 1\nconfig:\n{config}nodes:\n{nodes}") as h:
            for i in range(20):
                await h.send(f"out{i}", {"payload": i})
            await until(lambda: all(h.node(f"out{i}").outbox.delivered == 1 for i in range(20)),
                        what="20 PUBACKs on high file numbers")
            assert len(paho_threads()) == 1  # the test's subscriber; none for the 20 brokers
        await until(lambda: len(sub.got) == 20)
        assert sorted(int(p) for _, p, _ in sub.got) == list(range(20))
    finally:
        sub.close()
        for fd in filler:
            os.close(fd)


async def test_an_idle_connection_is_kept_alive_by_the_shared_ticker(mosquitto):
    """No thread pings for us: the event loop's keep-alive ticker must, or mosquitto drops
    an idle client after 1.5 x its keep-alive."""
    text = "meterflow: 1\n" + broker_yaml(mosquitto.port, keepalive="1s") + """nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/idle
"""
    async with Harness(text=text) as h:
        broker = h.node("broker")
        await until(lambda: broker.connected, what="connection")
        await asyncio.sleep(6)  # mosquitto drops a silent 1 s client after about 5 s here
        assert broker.connected and broker.generation == 1
        await h.send("out", {"payload": "still here"})
        await until(lambda: h.node("out").outbox.delivered == 1, what="publish after the idle time")


async def test_a_clean_stop_publishes_the_close_message_and_not_the_will(mosquitto):
    sub = Subscriber(mosquitto.port, "meter/life/#")
    text = "meterflow: 1\n" + broker_yaml(
        mosquitto.port, birth="{topic: meter/life/status, payload: online, qos: 1}",
        close="{topic: meter/life/status, payload: closing, qos: 1}",
        will="{topic: meter/life/status, payload: died}") + """nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: meter/life/reading
"""
    try:
        async with Harness(text=text) as h:
            await until(lambda: h.node("broker").connected, what="connection")
        await until(lambda: len(sub.got) >= 2, what="birth and close messages")
        await asyncio.sleep(0.5)  # room for a (wrong) will to arrive
    finally:
        sub.close()
    assert [p for _, p, _ in sub.got] == [b"online", b"closing"]
