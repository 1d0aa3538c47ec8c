"""InfluxDB: an ``influxdb`` config node and ``influx-out``, writing line protocol with aiohttp.

::

    config:
      - id: influx
        type: influxdb
        url: http://127.0.0.1:8086
        version: 2                    # 2: /api/v2/write (also InfluxDB 1.8+); 1: /write
        org: home                     # v2
        bucket: energy                # v2
        token: ${creds:influx.token}  # v2: "Authorization: Token ..."
        # database: energy            # v1 (with retention_policy, username, password)
        precision: s                  # ns | us | ms | s
    nodes:
      - id: iec
        type: influx-out
        server: influx
        measurement: IEC_Meter        # else msg.measurement
        fields: {value: payload.consumption, export: payload.backstream}   # field -> msg path
        tags: {meter: main}           # static tags added to every point
        timestamp: payload.time       # msg path of the time (default: msg.timestamp, else now)
        batch_size: 1000
        batch_interval: 1s

Without ``fields``, ``msg.payload`` is a number/string/boolean (field ``value``), a dict of
fields, one point ``{measurement?, fields, tags?, time?}`` or a list of such points.
Whole numbers are written as floats unless ``int_as_float: false`` (then ``12i``): a
field's type is fixed by its first write, and Node-RED flows write every number as a float.
Times are epoch numbers in ``time_unit`` (default ms, as JavaScript and Node-RED), ISO
8601 strings or datetimes; they are fixed when the message arrives, so a point retried
after an outage is written once (same series + time overwrites, never duplicates).

Writes are batched by size and interval and go through an outbox (:mod:`meterflow.outbox`)
with Telegraf's status policy: 2xx delivered; 429 and 5xx retried with backoff honouring
``Retry-After``; connection errors and timeouts retried; 413 splits the batch; 401/403
are retried (credentials can be fixed) and logged; any other 4xx (a bad point, a missing
database) drops the batch with a logged error, reported to catch nodes.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from .. import redact
from ..errors import AuthError, ConnectError, FlowError, HttpError, ParseError
from ..errors import TimeoutError as FlowTimeout
from ..message import MISSING, compile_path, get
from ..node import Node
from ..outbox import BATCH_FIELDS, Item, OutputNode, Reject, Retry, Split, for_node, tls_context
from ..outbox import FIELDS as OUTBOX_FIELDS
from ..schema import Field, parse_duration

PRECISIONS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


# ---- line protocol --------------------------------------------------------------------------------
def _esc(text: str, chars: str) -> str:
    text = text.replace("\\", "\\\\") if "\\" in chars else text
    for ch in chars:
        if ch != "\\":
            text = text.replace(ch, "\\" + ch)
    return text.replace("\n", "\\n")


def escape_measurement(name: str) -> str:
    return _esc(str(name), ", ")


def escape_key(key: str) -> str:
    """Tag keys, tag values and field keys: comma, equals sign, space."""
    return _esc(str(key), ",= ")


def field_value(v: Any, int_as_float: bool = False) -> str | None:
    """Line-protocol text of a field value; None for values InfluxDB cannot store (NaN, inf)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if int_as_float else f"{v}i"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return None
        return repr(v)
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(measurement: str, fields: dict, tags: dict | None = None, time: int | None = None,
         int_as_float: bool = False) -> str:
    """One point in line protocol; raises :class:`ParseError` when it has no storable field."""
    if not measurement:
        raise ParseError("a point needs a measurement")
    parts = [escape_measurement(measurement)]
    for k in sorted(tags or {}):
        v = tags[k]
        if v is None or v == "":
            continue  # InfluxDB rejects empty tag values: leave the tag out
        parts.append(f"{escape_key(k)}={escape_key(str(v) if not isinstance(v, bool) else str(v).lower())}")
    fs = []
    for k, v in fields.items():
        text = field_value(v, int_as_float)
        if text is not None:
            fs.append(f"{escape_key(k)}={text}")
    if not fs:
        raise ParseError(f"point for {measurement!r} has no field with a storable value: {fields!r}")
    out = ",".join(parts) + " " + ",".join(fs)
    return out if time is None else f"{out} {int(time)}"


def to_ns(value: Any, unit: str) -> int:
    """Epoch nanoseconds from a number in ``unit``, an ISO 8601 string or a datetime."""
    if isinstance(value, bool):
        raise ParseError(f"invalid time {value!r}")
    if isinstance(value, int):
        return value * PRECISIONS[unit]
    if isinstance(value, float):
        return round(value * PRECISIONS[unit])
    if isinstance(value, str):
        text = value.strip()
        try:
            return to_ns(float(text) if "." in text else int(text), unit)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ParseError(f"invalid time {value!r}: use an epoch number or ISO 8601") from None
        value = dt
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(value, date):
        return to_ns(datetime(value.year, value.month, value.day, tzinfo=UTC), unit)
    raise ParseError(f"invalid time {value!r}")


# ---- the server ------------------------------------------------------------------------------------
class InfluxDB(Node):
    type = "influxdb"
    summary = "An InfluxDB server: v2 API (org, bucket, token) or v1 API (database, user, password)"
    is_config = True
    schema = {
        "url": Field("str", "base URL, e.g. http://127.0.0.1:8086", required=True),
        "version": Field("int", "API: 2 (/api/v2/write, also InfluxDB 1.8+) or 1 (/write)", choices=(1, 2), default=2),
        "org": Field("str", "v2: organisation"),
        "bucket": Field("str", "v2: bucket (on 1.8+: database/retention-policy)"),
        "token": Field("str", "v2: API token, e.g. ${creds:influx.token}", secret=True),
        "database": Field("str", "v1: database"),
        "retention_policy": Field("str", "v1: retention policy (default: the database's default)"),
        "username": Field("str", "v1: user"),
        "password": Field("str", "v1: password", secret=True),
        "precision": Field("str", "timestamp precision written", choices=tuple(PRECISIONS), default="ns"),
        "timeout": Field("duration", "request timeout", default=10.0),
        "tls": Field("ref", "tls-profile for https URLs (client certificate, CA)", ref="tls-profile"),
    }


    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        if config.get("version") == 2:
            for k in ("org", "bucket"):
                if not config.get(k):
                    problems.append(((), f"InfluxDB v2 needs {k!r}"))
        elif not config.get("database"):
            problems.append(((), "InfluxDB v1 needs 'database'"))
        if not str(config.get("url", "")).startswith(("http://", "https://")):
            problems.append((("url",), "url must start with http:// or https://"))
        return problems

    def setup(self) -> None:
        for k in ("token", "password"):
            if self.config.get(k):
                redact.add(self.config[k])
        self._client = None

    def client(self):
        if self._client is None:
            from ..tlsprofile import new_session

            self._client = new_session(tls_context(self, self.config["tls"]) if self.config.get("tls") else True)
        return self._client

    def request(self) -> tuple[str, dict, dict]:
        """URL, query parameters and headers of a write."""
        c = self.config
        base = c["url"].rstrip("/")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if c["version"] == 2:
            params = {"org": c["org"], "bucket": c["bucket"], "precision": c["precision"]}
            if c.get("token"):
                headers["Authorization"] = f"Token {c['token']}"
            return f"{base}/api/v2/write", params, headers
        params = {"db": c["database"], "precision": V1_PRECISION[c["precision"]]}
        if c.get("retention_policy"):
            params["rp"] = c["retention_policy"]
        if c.get("username"):
            import base64

            auth = base64.b64encode(f"{c['username']}:{c.get('password') or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {auth}"
        return f"{base}/write", params, headers

    async def write(self, body: str) -> None:
        """POST line protocol; raise Retry / Reject / Split by Telegraf's status policy."""
        import aiohttp

        from ..tlsprofile import inactivity_timeout

        url, params, headers = self.request()
        try:
            async with self.client().post(url, params=params, headers=headers, data=body.encode("utf-8"),
                                          allow_redirects=False,
                                          timeout=inactivity_timeout(parse_duration(self.config["timeout"]))) as r:
                status, reply, retry_header = r.status, await r.read(), r.headers.get("Retry-After")
        except TimeoutError as e:  # aiohttp's timeouts are TimeoutErrors
            raise Retry(FlowTimeout(f"InfluxDB {url}: timeout ({type(e).__name__})")) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as e:
            # refused, reset, TLS, a reply cut short or not HTTP
            raise Retry(ConnectError(f"InfluxDB {url}: {type(e).__name__}: {e}")) from None
        if 200 <= status < 300:
            return
        text = reply.decode("utf-8", "replace").strip()[:300]
        if status == 413:
            raise Split()
        if status in (408, 429) or status >= 500:
            raise Retry(HttpError(f"InfluxDB answered {status}: {text}", status), retry_after(retry_header))
        if status in (401, 403):
            raise Retry(AuthError(f"InfluxDB refused the credentials ({status}): {text}", status=status))
        raise Reject(HttpError(f"InfluxDB rejected the write ({status}): {text}", status))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


# ---- the output node ------------------------------------------------------------------------------------
class InfluxOut(OutputNode):
    type = "influx-out"
    summary = "Write points to InfluxDB (v1 or v2) in batches; retried, bounded and optionally spooled"
    schema = {
        "server": Field("ref", "influxdb config node", ref="influxdb", required=True),
        "measurement": Field("str", "measurement (else msg.measurement or the point's own)"),
        "fields": Field("dict", "field name -> msg property path (e.g. value: payload.consumption); "
                        "unset: fields come from msg.payload"),
        "tags": Field("dict", "static tags added to every point (tag -> value)"),
        "timestamp": Field("path", "msg property holding the time (default: the point's time, else "
                           "msg.timestamp, else now)"),
        "time_unit": Field("str", "unit of numeric times", choices=tuple(PRECISIONS), default="ms"),
        "int_as_float": Field("bool", "write whole numbers as floats (as Node-RED, whose numbers are all "
                              "floats): a reading of 12 then fits a float field's history; false: 12i",
                              default=True),
        **OUTBOX_FIELDS,
        **BATCH_FIELDS,
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return []


    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        for k, p in (config.get("fields") or {}).items():
            try:
                compile_path(str(p))
            except ValueError as e:
                problems.append((("fields", k), str(e)))
        return problems

    def setup(self) -> None:
        self.server: InfluxDB = self.config_node(self.config["server"])
        self.outbox = for_node(self, self._sink, batch_size=1000, batch_interval=1.0,
                               on_delivered=self._delivered, on_dropped=self._dropped)
        self._precision = PRECISIONS[self.server.config["precision"]]
        self._pending: dict[int, list] = {}  # id(msg) -> [msg, points not yet written]

    async def _sink(self, batch: list[Item]) -> None:
        await self.server.write("\n".join(item.data for item in batch))

    def _delivered(self, item: Item) -> None:
        entry = self._pending.get(id(item.msg)) if item.msg is not None else None
        if entry is not None and entry[0] is item.msg:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._pending[id(item.msg)]
                self.done(item.msg)  # every point of the message is written

    def _dropped(self, item: Item, error: FlowError) -> None:
        entry = self._pending.get(id(item.msg)) if item.msg is not None else None
        if entry is not None and entry[0] is item.msg:
            del self._pending[id(item.msg)]  # one error per message, not one per point
            self.error(error, item.msg)

    # ---- message -> points --------------------------------------------------------------------
    def points(self, msg: dict) -> list[str]:
        c = self.config
        default_measurement = c.get("measurement") or msg.get("measurement")
        now_ns = round(self.clock.time() * 1e9)
        msg_time = get(msg, c["timestamp"]) if c.get("timestamp") else msg.get("timestamp", MISSING)
        raw_points: list[dict] = []
        if c.get("fields"):
            fields = {}
            for k, p in c["fields"].items():
                v = get(msg, str(p))
                if v is not MISSING:
                    fields[k] = v
            raw_points.append({"fields": fields})
        else:
            payload = msg.get("payload")
            items = payload if isinstance(payload, list) else [payload]
            for p in items:
                if isinstance(p, dict) and "fields" in p:
                    raw_points.append(p)
                elif isinstance(p, dict):
                    raw_points.append({"fields": p})
                elif isinstance(p, bool | int | float | str):
                    raw_points.append({"fields": {"value": p}})
                else:
                    raise ParseError(f"cannot write {type(p).__name__} payload to InfluxDB: "
                                     "send a value, a dict of fields or points {fields, tags, time}")
        out = []
        for p in raw_points:
            measurement = p.get("measurement") or default_measurement
            if not measurement:
                raise ParseError("no measurement: set 'measurement' on the node, msg.measurement or the point")
            if not isinstance(p["fields"], dict):
                raise ParseError(f"point fields must be a dict, got {type(p['fields']).__name__}")
            tags = dict(c.get("tags") or {})
            tags.update(p.get("tags") or {})
            t = p.get("time", MISSING)
            if t is MISSING or t is None:
                t = msg_time
            ns = now_ns if t is MISSING or t is None else to_ns(t, c["time_unit"])
            out.append(line(measurement, p["fields"], tags, ns // self._precision, c["int_as_float"]))
        return out

    def on_input(self, msg: dict):
        lines = self.points(msg)  # a ParseError goes to catch nodes, nothing is queued
        if not lines:
            self.done(msg)
            return None
        self._pending[id(msg)] = [msg, len(lines)]
        for text in lines:
            self.outbox.put(text, msg)
        return None


NODE_TYPES = [InfluxDB, InfluxOut]
