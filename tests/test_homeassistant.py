"""Home Assistant: ha-service's REST call checked by a local HTTP server (path, Bearer token,
merged service data, reply on the output, error kinds, retries), and ha-discovery's
retained MQTT discovery config read back from the real mosquitto."""

import asyncio
import json
import logging

from services import Subscriber, broker_yaml, until

from meterflow.testing import Harness

TOKEN = "ha-long-lived-token-xyz"


def service_flow(url: str, extra: str = "") -> str:
    return f"""meterflow: 1
config:
  - id: ha
    type: ha-server
    url: {url}
    token: ${{HA_TOKEN}}
    timeout: 2s
nodes:
  - id: call
    type: ha-service
    server: ha
    domain: input_boolean
    service: turn_on
    entity_id: input_boolean.cert_updated
    data: {{source: meterflow}}
    retry_min: 5s{extra}
    wires: [reply]
  - id: reply
    type: debug
    active: false
  - id: catch
    type: catch
    scope: [call]
    wires: [caught]
  - id: caught
    type: debug
    active: false
"""


async def test_service_call_request_and_reply(http_recorder):
    rec = http_recorder
    rec.reply(200, [{"entity_id": "input_boolean.cert_updated", "state": "on"}])
    async with Harness(text=service_flow(rec.url), env={"HA_TOKEN": TOKEN}) as h:
        await h.send("call", {"payload": {"data": {"reason": "renewed"}}, "topic": "cert"})
        await until(lambda: len(h.messages("reply")) == 1)
        m = h.messages("reply")[0]
    (req,) = rec.requests
    assert (req.method, req.path) == ("POST", "/api/services/input_boolean/turn_on")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == {"source": "meterflow", "reason": "renewed", "entity_id": "input_boolean.cert_updated"}
    assert m["payload"] == [{"entity_id": "input_boolean.cert_updated", "state": "on"}] and m["topic"] == "cert"


async def test_service_from_msg_payload_when_the_node_leaves_it_unset(http_recorder):
    rec = http_recorder
    text = service_flow(rec.url).replace("    domain: input_boolean\n    service: turn_on\n", "")
    text = text.replace("    entity_id: input_boolean.cert_updated\n", "")
    async with Harness(text=text, env={"HA_TOKEN": TOKEN}) as h:
        await h.send("call", {"payload": {"domain": "input_datetime", "service": "set_datetime",
                                          "entity_id": "input_datetime.energy_last_read",
                                          "data": {"datetime": "2024-01-01 00:55:00"}}})
        await until(lambda: len(rec.requests) == 1)
    assert rec.requests[0].path == "/api/services/input_datetime/set_datetime"
    assert json.loads(rec.requests[0].body)["entity_id"] == "input_datetime.energy_last_read"


async def test_refused_token_is_an_auth_error_and_not_logged(http_recorder, caplog):
    rec = http_recorder
    rec.reply(401, b"401: Unauthorized")
    with caplog.at_level(logging.DEBUG):
        async with Harness(text=service_flow(rec.url), env={"HA_TOKEN": TOKEN}) as h:
            await h.send("call", {"payload": None})
            await until(lambda: len(h.messages("caught")) == 1)
            err = h.messages("caught")[0]["error"]
    assert err["kind"] == "auth" and err["status"] == 401
    assert TOKEN not in caplog.text


async def test_server_error_is_retried_then_replied(http_recorder):
    rec = http_recorder
    rec.reply(502, b"bad gateway")
    rec.reply(200, [])
    async with Harness(text=service_flow(rec.url), env={"HA_TOKEN": TOKEN}) as h:
        await h.send("call", {"payload": None})
        await until(lambda: len(rec.requests) == 1 and h.node("call").outbox._task is None)
        assert h.messages("reply") == [] and h.messages("caught") == []
        await h.advance(6)
        await until(lambda: len(h.messages("reply")) == 1)
    assert h.messages("reply")[0]["payload"] == []


async def test_connect_error_without_retry_goes_to_catch():
    from services import free_port

    url = f"http://127.0.0.1:{free_port()}"
    async with Harness(text=service_flow(url, "\n    retry: false"), env={"HA_TOKEN": TOKEN}) as h:
        await h.send("call", {"payload": None})
        await until(lambda: len(h.messages("caught")) == 1)
        assert h.messages("caught")[0]["error"]["kind"] == "connect"


async def test_discovery_config_is_published_retained(mosquitto):
    text = "meterflow: 1\n" + broker_yaml(mosquitto.port) + """nodes:
  - id: disc
    type: ha-discovery
    broker: broker
    object_id: smt_energy
    name: Energy Reading
    state_topic: smt/reading
    device: {name: Smart meter, manufacturer: Landis+Gyr}
"""
    async with Harness(text=text) as h:
        out = h.node("disc").outbox
        await until(lambda: out.delivered == 1, what="discovery publish")
        sub = Subscriber(mosquitto.port, "homeassistant/sensor/#")
        try:
            await until(lambda: len(sub.got) == 1, what="retained discovery config")
            topic, payload, retained = sub.got[0]
            # Home Assistant comes online: the config is published again.
            sub.client.publish("homeassistant/status", "online", qos=1)
            await until(lambda: out.delivered == 2, what="re-discovery")
            await h.send("disc", {"remove": True})
            await until(lambda: out.delivered == 3)
            await asyncio.sleep(0.1)
        finally:
            sub.close()
    assert topic == "homeassistant/sensor/smt_energy/config" and retained
    config = json.loads(payload)
    assert {k: config[k] for k in ("device_class", "state_class", "unit_of_measurement", "state_topic",
                                   "unique_id", "name")} == {
        "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "kWh",
        "state_topic": "smt/reading", "unique_id": "smt_energy", "name": "Energy Reading"}
    assert config["device"] == {"name": "Smart meter", "manufacturer": "Landis+Gyr", "identifiers": ["smt_energy"]}
    assert config["origin"]["name"] == "meterflow"
    assert sub.got[-1][1] == b""  # the empty payload that deletes the entity
    late = Subscriber(mosquitto.port, "homeassistant/sensor/#")
    await asyncio.sleep(0.2)
    late.close()
    assert late.got == []  # nothing retained any more
