"""Home Assistant: ``ha-server`` (REST API), ``ha-service`` (call a service) and
``ha-discovery`` (MQTT discovery of an energy sensor).

::

    config:
      - id: ha
        type: ha-server
        url: http://homeassistant.local:8123
        token: ${creds:ha.token}            # a long-lived access token
      - id: broker
        type: mqtt-broker
        host: 127.0.0.1
    nodes:
      - id: cert-bad
        type: ha-service
        server: ha
        domain: input_boolean
        service: turn_on
        entity_id: input_boolean.cert_updated
        data: {}                            # merged under msg.payload.data
      - id: discovery
        type: ha-discovery
        broker: broker
        name: Energy Reading                # the entity name (or entity_name: ...)
        object_id: smt_energy               # also the unique_id
        state_topic: smt/reading
        # device_class: energy, state_class: total_increasing, unit: kWh (the defaults)

``ha-service`` sends ``POST /api/services/<domain>/<service>`` with ``Authorization:
Bearer <token>`` and the service data as JSON: the node's ``data``, then
``msg.payload.data`` (when the payload is a mapping) over it, then ``entity_id``.
``msg.payload`` may also carry ``domain``, ``service`` and ``entity_id`` when the node
leaves them unset.  The reply (the states changed) becomes ``msg.payload`` on the output.
Errors have kinds: ``auth`` (401/403), ``http`` (other 4xx, and 5xx once retries are off),
``connect``, ``timeout``; transient ones are retried through an outbox unless
``retry: false``.

``ha-discovery`` publishes the discovery config, retained, to
``<prefix>/sensor/<object_id>/config`` when the flow starts, whenever a message arrives,
and (``rediscover: true``) when Home Assistant announces ``online`` on its status topic.
A message with ``msg.remove: true`` publishes the empty retained payload that deletes the
entity.  ``state_class`` defaults to ``total_increasing`` (a meter's register; the HA
sensor that ``smt-ha-mqtt.yaml`` declares); ``total`` suits a value that may go down.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .. import __version__, redact
from ..errors import AuthError, ConfigError, ConnectError, HttpError, ParseError
from ..errors import TimeoutError as FlowTimeout
from ..node import Node
from ..outbox import FIELDS as OUTBOX_FIELDS
from ..outbox import Item, OutputNode, Reject, Retry, drain_time, for_node, tls_context
from ..schema import Field, parse_duration
from .mqtt import MqttPublisher, broker_of

_ID = re.compile(r"[a-zA-Z0-9_-]+$")


class HaServer(Node):
    type = "ha-server"
    summary = "A Home Assistant instance reached over its REST API with a long-lived token"
    is_config = True
    schema = {
        "url": Field("str", "base URL, e.g. http://homeassistant.local:8123", required=True),
        "token": Field("str", "long-lived access token, e.g. ${creds:ha.token}", required=True, secret=True),
        "timeout": Field("duration", "request timeout", default=10.0),
        "tls": Field("ref", "tls-profile for https URLs", ref="tls-profile"),
    }


    @classmethod
    def check(cls, config: dict) -> list:
        if not str(config.get("url", "")).startswith(("http://", "https://")):
            return [(("url",), "url must start with http:// or https://")]
        return []

    def setup(self) -> None:
        redact.add(self.config["token"])
        self._client = None

    def client(self):
        if self._client is None:
            from ..tlsprofile import new_session

            self._client = new_session(tls_context(self, self.config["tls"]) if self.config.get("tls") else True)
        return self._client

    async def call_service(self, domain: str, service: str, data: dict) -> Any:
        """POST /api/services/<domain>/<service>; raises Retry (transient) or Reject."""
        import aiohttp

        from ..tlsprofile import inactivity_timeout

        url = f"{self.config['url'].rstrip('/')}/api/services/{domain}/{service}"
        headers = {"Authorization": f"Bearer {self.config['token']}", "Content-Type": "application/json"}
        try:
            async with self.client().post(url, headers=headers, data=json.dumps(data).encode(), allow_redirects=False,
                                          timeout=inactivity_timeout(parse_duration(self.config["timeout"]))) as r:
                s, body = r.status, await r.read()
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors
            raise Retry(FlowTimeout(f"Home Assistant {url}: timeout")) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as e:
            # refused, reset, TLS, a reply cut short or not HTTP
            raise Retry(ConnectError(f"Home Assistant {url}: {type(e).__name__}: {e}")) from None
        text = body.decode("utf-8", "replace")
        if 200 <= s < 300:
            try:
                return json.loads(body) if body else None
            except ValueError:
                raise Reject(ParseError(f"Home Assistant {url}: reply is not JSON: {text[:120]!r}")) from None
        text = text.strip()[:200]
        if s in (401, 403):
            raise Reject(AuthError(f"Home Assistant refused the token ({s}) for {domain}.{service}", status=s))
        if s in (408, 429) or s >= 500:
            raise Retry(HttpError(f"Home Assistant answered {s} for {domain}.{service}: {text}", s))
        raise Reject(HttpError(f"Home Assistant answered {s} for {domain}.{service}: {text}", s))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class HaService(OutputNode):
    type = "ha-service"
    summary = "Call a Home Assistant service (POST /api/services/<domain>/<service>); reply on the output"
    outputs = 1  # the service reply
    schema = {
        "server": Field("ref", "ha-server config node", ref="ha-server", required=True),
        "domain": Field("str", "service domain, e.g. input_boolean (else msg.payload.domain)"),
        "service": Field("str", "service, e.g. turn_on (else msg.payload.service)"),
        "entity_id": Field("str|list", "target entity id(s) (else msg.payload.entity_id)"),
        "data": Field("dict", "service data; msg.payload.data is merged over it", default={}),
        **OUTBOX_FIELDS,
    }


    def setup(self) -> None:
        self.server: HaServer = self.config_node(self.config["server"])
        self.outbox = for_node(self, self._sink, on_delivered=self._delivered, on_dropped=self._dropped)

    async def _sink(self, batch: list[Item]) -> None:
        for item in batch:
            d = item.data
            item.state["result"] = await self.server.call_service(d["domain"], d["service"], d["data"])
            self.outbox.mark_done(item)

    def _delivered(self, item: Item) -> None:
        msg = item.msg if item.msg is not None else {}
        msg["payload"] = item.state.get("result")
        self.send(msg)
        if item.msg is not None:
            self.done(item.msg)

    def on_input(self, msg: dict):
        c = self.config
        p = msg.get("payload") if isinstance(msg.get("payload"), dict) else {}
        domain = c.get("domain") or p.get("domain")
        service = c.get("service") or p.get("service")
        if not domain or not service:
            raise ConfigError("no service: set 'domain' and 'service' on the node or in msg.payload")
        data = dict(c.get("data") or {})
        if isinstance(p.get("data"), dict):
            data.update(p["data"])
        entity = c.get("entity_id") or p.get("entity_id")
        if entity:
            data["entity_id"] = entity
        self.outbox.put({"domain": str(domain), "service": str(service), "data": data}, msg)
        return None


class HaDiscovery(Node):
    type = "ha-discovery"
    summary = "Publish Home Assistant MQTT discovery for an energy sensor (retained), via an mqtt-broker"
    auto_done = False
    outputs = 0
    schema = {
        "broker": Field("ref", "mqtt-broker config node", ref="mqtt-broker", required=True),
        "object_id": Field("str", "entity object id and unique_id ([a-zA-Z0-9_-])", required=True),
        "entity_name": Field("str", "entity name shown in Home Assistant (default: the node's name, else Energy)"),
        "state_topic": Field("str", "topic the readings are published on", required=True),
        "prefix": Field("str", "discovery prefix", default="homeassistant"),
        "component": Field("str", "entity platform", default="sensor"),
        "device_class": Field("str", "device class", default="energy"),
        "state_class": Field("str", "state class: total_increasing (a meter register that only grows), "
                             "total, measurement", choices=("total_increasing", "total", "measurement"),
                             default="total_increasing"),
        "unit": Field("str", "unit of measurement", default="kWh"),
        "value_template": Field("str", "Jinja template extracting the value from the state payload"),
        "availability_topic": Field("str", "topic carrying online/offline"),
        "device": Field("map", "device the entity belongs to", fields={
            "identifiers": Field("str|list", "device identifiers"),
            "name": Field("str", "device name"),
            "manufacturer": Field("str", "manufacturer"),
            "model": Field("str", "model"),
        }),
        "extra": Field("dict", "more discovery keys, sent as they are", default={}),
        "rediscover": Field("bool", "publish again when Home Assistant announces 'online'", default=True),
        "status_topic": Field("str", "Home Assistant's birth/will topic", default="homeassistant/status"),
        **OUTBOX_FIELDS,
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return []


    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        for k in ("object_id", "component"):
            if isinstance(config.get(k), str) and not _ID.match(config[k]):
                problems.append(((k,), f"{k} may only contain letters, digits, _ and -"))
        return problems

    @property
    def topic(self) -> str:
        c = self.config
        return f"{c['prefix']}/{c['component']}/{c['object_id']}/config"

    def payload(self) -> dict:
        c = self.config
        p: dict[str, Any] = {
            "name": c.get("entity_name") or self.name or "Energy",
            "unique_id": c["object_id"],
            "object_id": c["object_id"],
            "state_topic": c["state_topic"],
            "device_class": c["device_class"],
            "state_class": c["state_class"],
            "unit_of_measurement": c["unit"],
            "origin": {"name": "meterflow", "sw_version": __version__},
        }
        if c.get("value_template"):
            p["value_template"] = c["value_template"]
        if c.get("availability_topic"):
            p["availability_topic"] = c["availability_topic"]
        dev = {k: v for k, v in (c.get("device") or {}).items() if v is not None}
        if dev:
            ids = dev.get("identifiers") or [c["object_id"]]
            dev["identifiers"] = ids if isinstance(ids, list) else [ids]
            p["device"] = dev
        p.update(c.get("extra") or {})
        return p

    def setup(self) -> None:
        self.broker = broker_of(self)
        self.publisher = MqttPublisher(self, self.broker, batch=10)
        self.outbox = self.publisher.outbox

    async def start(self) -> None:
        self.outbox.open()
        self.publish()
        if self.config["rediscover"]:
            self.broker.subscribe(self.config["status_topic"], 1, self._ha_status)

    async def stop(self) -> None:
        await self.outbox.drain(drain_time(self))

    def _ha_status(self, message) -> None:
        if message.payload.strip() == b"online":
            self.publish()

    def publish(self, msg: dict | None = None, remove: bool = False) -> None:
        payload = "" if remove else json.dumps(self.payload(), separators=(",", ":"))
        self.outbox.put(MqttPublisher.item(self.topic, payload, 1, True), msg)

    def on_input(self, msg: dict):
        self.publish(msg, remove=msg.get("remove") is True)
        return None


NODE_TYPES = [HaServer, HaService, HaDiscovery]
