"""influx-out: the line-protocol serializer; v1 writes to Debian's real influxd 1.x read back
through /query (every escaping case); the v2 request checked by a local HTTP server
(IEC_Meter, value/export, ns time, Token auth); Telegraf's status policy; influxd stopped
and restarted -> every point written exactly once."""

import pytest
from services import until

from meterflow.nodes.influx import escape_key, escape_measurement, field_value, line, to_ns
from meterflow.testing import Harness

T = 1_700_000_000  # seconds


def test_line_protocol_escaping():
    assert escape_measurement("my meas,ure ment=x") == r"my\ meas\,ure\ ment=x"  # '=' is fine in a measurement
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert field_value('say "hi" \\ bye') == r'"say \"hi\" \\ bye"'
    assert field_value(3) == "3i" and field_value(3, int_as_float=True) == "3"
    assert field_value(True) == "true" and field_value(False) == "false"
    assert field_value(1.5) == "1.5" and field_value(float("nan")) is None
    assert line("m", {"v": 1.0, "n": None}, {"b": "2", "a": "1", "empty": ""}, 5) == "m,a=1,b=2 v=1.0 5"
    with pytest.raises(Exception, match="no field"):
        line("m", {"v": float("inf")})


def test_times():
    assert to_ns(T * 1000, "ms") == T * 10**9
    assert to_ns("2023-11-14T22:13:20Z", "ms") == T * 10**9
    assert to_ns("2023-11-14T22:13:20.5+00:00", "ms") == T * 10**9 + 500_000_000
    assert to_ns(T, "s") == T * 10**9 and to_ns(1.5, "s") == 1_500_000_000


def v1_flow(url: str, db: str, extra: str = "", server_extra: str = "") -> str:
    return f"""meterflow: 1
config:
  - id: influx
    type: influxdb
    url: {url}
    version: 1
    database: {db}
    precision: s{server_extra}
nodes:
  - id: out
    type: influx-out
    server: influx
    time_unit: s
    batch_interval: 1s
    retry_min: 1s
    retry_max: 2s{extra}
  - id: catch
    type: catch
    scope: [out]
    wires: [caught]
  - id: caught
    type: debug
    active: false
  - id: done
    type: complete
    scope: [out]
    wires: [written]
  - id: written
    type: debug
    active: false
"""


async def test_v1_points_with_every_escaping_case_are_written_and_read_back(influxd):
    db = influxd.create_db("escapes")
    tricky_tag = 'a,b=c d"e'
    tricky_field = 'he said "hi" \\ then, left = true'
    async with Harness(text=v1_flow(influxd.url, db, "\n    int_as_float: false")) as h:
        h.inject("out", {"payload": {
            "measurement": "meter reading,v2", "time": T,
            "tags": {"site id": tricky_tag, "kind": "import"},
            "fields": {"kwh": 12.5, "reads": 3, "ok": True, "note": tricky_field, "odd key,=x": 1.25},
        }})
        h.inject("out", {"measurement": "simple", "payload": [
            {"fields": {"value": 1.0}, "time": T + 1}, {"fields": {"value": 2.0}, "time": T + 2}]})
        await h.settle()
        out = h.node("out").outbox
        assert out.delivered == 0  # waiting for the batch interval
        await h.advance(1)
        await until(lambda: out.delivered == 3, what="write")
        assert h.messages("caught") == [] and len(h.messages("written")) == 2
    rows = influxd.rows('SELECT * FROM "meter reading,v2"', db)
    assert rows == [{"time": T * 10**9, "kind": "import", "kwh": 12.5, "note": tricky_field, "odd key,=x": 1.25,
                     "ok": True, "reads": 3, "site id": tricky_tag}]
    field_types = influxd.query('SHOW FIELD KEYS FROM "meter reading,v2"', db)["results"][0]["series"][0]["values"]
    assert dict(map(tuple, field_types))["reads"] == "integer"
    assert [r["value"] for r in influxd.rows("SELECT value FROM simple", db)] == [1.0, 2.0]


async def test_bad_point_is_dropped_logged_and_caught(influxd, caplog):
    db = influxd.create_db("conflict")
    async with Harness(text=v1_flow(influxd.url, db, "\n    measurement: m\n    int_as_float: false")) as h:
        await h.send("out", {"payload": {"fields": {"reads": 3}, "time": T}})
        await h.advance(1)
        await until(lambda: h.node("out").outbox.delivered == 1)
        await h.send("out", {"payload": {"fields": {"reads": "text"}, "time": T + 1}})  # field type conflict
        await h.advance(1)
        await until(lambda: h.node("out").outbox.dropped == 1, what="drop")
        err = h.messages("caught")[0]["error"]
        assert err["kind"] == "http" and err["status"] == 400 and "conflict" in err["message"]
    assert any("dropped (http)" in r.getMessage() for r in caplog.records)


async def test_influxd_down_then_back_every_point_written_exactly_once(influxd):
    db = influxd.create_db("outage")
    try:
        async with Harness(text=v1_flow(influxd.url, db, "\n    measurement: energy\n    batch_size: 20")) as h:
            out = h.node("out").outbox
            for i in range(20):
                h.inject("out", {"payload": {"value": float(i)}, "timestamp": T + i})
            await h.advance(1)
            await until(lambda: out.delivered == 20, what="first batch")
            influxd.stop()
            for i in range(20, 50):
                h.inject("out", {"payload": {"value": float(i)}, "timestamp": T + i})
            await h.advance(1)
            await until(lambda: out.retried > 0 and out._task is None, what="a failed attempt")
            await h.advance(5)
            assert out.stats()["queued"] == 30 and out.dropped == 0
            influxd.start()
            for _ in range(50):
                await h.advance(2)
                if out.delivered == 50:
                    break
                await until(lambda: out._task is None)
            assert out.stats() == {"queued": 0, "delivered": 50, "retried": out.retried, "dropped": 0}
    finally:
        if influxd.proc is None:
            influxd.start()
    rows = influxd.rows("SELECT value FROM energy", db)
    assert [r["value"] for r in rows] == [float(i) for i in range(50)]
    assert [r["time"] for r in rows] == [(T + i) * 10**9 for i in range(50)]


async def test_v2_request_format(http_recorder):
    rec = http_recorder
    text = f"""meterflow: 1
config:
  - id: influx
    type: influxdb
    url: {rec.url}
    version: 2
    org: home
    bucket: energy
    token: ${{INFLUX_TOKEN}}
    precision: ns
nodes:
  - id: iec
    type: influx-out
    server: influx
    measurement: IEC_Meter
    fields: {{value: payload.consumption, export: payload.backstream}}
    timestamp: payload.time
    batch_interval: 0s
"""
    async with Harness(text=text, env={"INFLUX_TOKEN": "tok-secret-123"}) as h:
        await h.send("iec", {"payload": {"consumption": 12.5, "backstream": 3, "time": "2023-11-14T22:13:20Z"}})
        await until(lambda: h.node("iec").outbox.delivered == 1)
    (req,) = rec.requests
    assert req.method == "POST"
    path, _, query = req.path.partition("?")
    assert path == "/api/v2/write"
    assert dict(p.split("=") for p in query.split("&")) == {"org": "home", "bucket": "energy", "precision": "ns"}
    assert req.headers["Authorization"] == "Token tok-secret-123"
    assert req.headers["Content-Type"].startswith("text/plain")
    assert req.body == b"IEC_Meter value=12.5,export=3 1700000000000000000"


async def test_status_policy_retry_after_split_and_server_errors(http_recorder):
    rec = http_recorder
    text = f"""meterflow: 1
config:
  - id: influx
    type: influxdb
    url: {rec.url}
    org: o
    bucket: b
    precision: s
nodes:
  - id: out
    type: influx-out
    server: influx
    measurement: m
    time_unit: s
    batch_interval: 1s
    batch_size: 4
    retry_min: 1s
"""
    rec.reply(429, b"slow down", {"Retry-After": "30"})
    rec.reply(413, b"too large")
    rec.reply(503, b"unavailable")
    async with Harness(text=text) as h:
        out = h.node("out").outbox
        for i in range(4):
            h.inject("out", {"payload": i, "timestamp": T + i})
        await h.settle()  # a full batch leaves at once
        await until(lambda: len(rec.requests) == 1 and out._task is None)
        await h.advance(29)
        assert len(rec.requests) == 1  # Retry-After: 30 s honoured
        await h.advance(1.5)
        await until(lambda: len(rec.requests) >= 3 and out._task is None)  # 413 -> halves; first half 503
        await h.advance(5)
        await until(lambda: out.delivered == 4)
    bodies = [r.body.decode() for r in rec.requests]
    assert bodies[0].count("\n") == 3 and bodies[1] == bodies[0]          # whole batch twice
    assert bodies[2] == "m value=0 1700000000\nm value=1 1700000001"         # then half of it
    assert "\n".join(bodies[3:]) == "\n".join(f"m value={i} {T + i}" for i in range(4))


async def test_v1_request_with_retention_policy_and_login(http_recorder):
    import base64

    rec = http_recorder
    text = f"""meterflow: 1
config:
  - id: influx
    type: influxdb
    url: {rec.url}/
    version: 1
    database: smt
    retention_policy: year
    username: writer
    password: ${{INFLUX_PASSWORD}}
    precision: ms
nodes:
  - id: out
    type: influx-out
    server: influx
    measurement: reading
    tags: {{meter: main, phase: ""}}
    batch_interval: 0s
"""
    async with Harness(text=text, env={"INFLUX_PASSWORD": "pw-influx-789"}) as h:
        await h.send("out", {"payload": 7, "timestamp": T * 1000})
        await until(lambda: h.node("out").outbox.delivered == 1)
    (req,) = rec.requests
    path, _, query = req.path.partition("?")
    assert path == "/write" and dict(p.split("=") for p in query.split("&")) == {"db": "smt", "rp": "year",
                                                                                 "precision": "ms"}
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"writer:pw-influx-789").decode()
    assert req.body == f"reading,meter=main value=7 {T * 1000}".encode()  # whole numbers as floats by default
