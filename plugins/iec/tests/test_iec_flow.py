"""flows/iec.yaml end to end: the IEC sandbox in, a real InfluxDB 1.x, the v2 write request
against a checking HTTP server, and Home Assistant discovery on a real mosquitto.

The flow runs on the virtual clock (the sandbox reads it too); the servers are real, so the
assertions wait on the real clock for what they receive."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from services import until

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from meterflow_iec.login import login  # noqa: E402
from meterflow_iec.nodes import NODE_TYPES, epoch_ns  # noqa: E402
from meterflow_iec.sandbox import IECSandbox  # noqa: E402
from meterflow_iec.tokens import TokenStore  # noqa: E402

from meterflow.testing import Harness, registry_with  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
FLOW = ROOT / "flows" / "iec.yaml"
TZ = ZoneInfo("Asia/Jerusalem")
T0 = datetime(2026, 2, 10, 12, 7, tzinfo=TZ).timestamp()
TODAY = date(2026, 2, 10)
REGISTRY = registry_with(*NODE_TYPES)
paho = pytest.importorskip("paho.mqtt.client")


@pytest.fixture
def store(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.setenv("METERFLOW_KEY", Fernet.generate_key().decode())
    return TokenStore("iec")


class Subscriber:
    """A plain paho client collecting {topic: last payload} (retained ones included)."""

    def __init__(self, port: int, *topics: str):
        self.got: dict[str, bytes] = {}
        self.lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe([(t, 1) for t in topics])
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c
        assert ready.wait(5), "subscriber did not subscribe"

    def _message(self, client, userdata, m):
        with self.lock:
            self.got[m.topic] = m.payload

    def json(self, topic: str):
        with self.lock:
            return json.loads(self.got[topic]) if self.got.get(topic) else None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


async def start_flow(sb_kw: dict, env: dict, store) -> tuple[Harness, IECSandbox]:
    h = Harness(FLOW, start_time=T0, registry=REGISTRY)
    sb = IECSandbox(port=0, now=h.clock.time, **sb_kw).start()
    await login(sb.id_number, store, okta_url=sb.okta_url, api_url=sb.api_url, ask=lambda p: sb.otp,
                say=lambda s: None, now=h.clock.time)
    h.env = {"IEC_OKTA_URL": sb.okta_url, "IEC_API_URL": sb.api_url, "MQTT_PORT": "1", **env}
    await h.start()
    return h, sb


async def sandbox_rows(sb, store, day: date) -> list[dict]:
    import httpx

    body = {"contractNumber": sb.contract_id, "lastInvoiceDate": day.isoformat(), "fromDate": day.isoformat(),
            "resolution": 1, "smartMetersList": [{"meterKind": "Backstream", "meterCode": sb.meter_code,
                                                  "meterSerial": sb.meter_serial}]}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sb.api_url}/Consumption/RemoteReadingRange/{sb.contract_id}", json=body,
                         headers={"Authorization": f"Bearer {store.load().id_token}"})
    return r.json()["meterList"][0]["periodConsumptions"]


def test_flow_checks_clean():
    r = subprocess.run([sys.executable, "-m", "meterflow.cli", "check", str(FLOW)], capture_output=True, text=True,
                       timeout=60)
    if "unknown node type 'iec-" in r.stdout + r.stderr:
        pytest.skip("meterflow-iec is not installed (pip install -e plugins/iec)")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 warning(s)" in r.stdout + r.stderr or "ok:" in r.stdout + r.stderr


async def test_points_in_a_real_influxdb_1x(influxd, mosquitto, store):
    db = influxd.create_db("iec_e2e")
    h, sb = await start_flow({}, {"INFLUX_URL": influxd.url, "INFLUX_VERSION": "1", "INFLUX_DATABASE": db,
                                  "MQTT_PORT": str(mosquitto.port)}, store)
    try:
        await h.advance(10)  # the bill at 2 s, the first reading at 5 s, the batch a second later
        await until(lambda: len(influxd.rows("SELECT * FROM IEC_Meter", db)) >= 240, what="240 points")
        rows = influxd.rows("SELECT * FROM IEC_Meter", db)
        assert len(rows) == 48 + 96 + 96  # today so far, yesterday, two days ago; never the month
        assert set(rows[0]) == {"time", "value", "export"}  # no tags
        assert influxd.query("SHOW TAG KEYS FROM IEC_Meter", db)["results"][0].get("series") is None
        by_time = {r["time"]: r for r in rows}
        for day in (TODAY, date(2026, 2, 9), date(2026, 2, 8)):
            for src in await sandbox_rows(sb, store, day):
                got = by_time[epoch_ns(src["interval"])]
                assert (got["value"], got["export"]) == (src["consumption"], src["backStream"])
        assert min(by_time) == epoch_ns("2026-02-07T22:00:00+00:00")  # 8 Feb 00:00 local
        # An hour later the same intervals are rewritten, not duplicated; 4 new ones for today.
        await h.advance(3600)
        await until(lambda: len(influxd.rows("SELECT * FROM IEC_Meter", db)) >= 244, what="244 points")
        assert len(influxd.rows("SELECT * FROM IEC_Meter", db)) == 244
        assert h.errors == []
    finally:
        await h.stop()
        sb.stop()


async def test_v2_write_request_format(http_recorder, mosquitto, store):
    h, sb = await start_flow({}, {"INFLUX_URL": http_recorder.url, "INFLUX_VERSION": "2", "INFLUX_ORG": "home",
                                  "INFLUX_BUCKET": "energy", "INFLUX_TOKEN": "t0ken-v2",
                                  "MQTT_PORT": str(mosquitto.port)}, store)
    try:
        await h.advance(10)
        await until(lambda: sum(r.body.count(b"\n") + 1 for r in http_recorder.requests) >= 240, what="the write")
        writes = http_recorder.requests
        assert {r.method for r in writes} == {"POST"}
        path, _, query = writes[0].path.partition("?")
        assert path == "/api/v2/write"
        assert dict(p.split("=") for p in query.split("&")) == {"org": "home", "bucket": "energy", "precision": "ns"}
        assert writes[0].headers["Authorization"] == "Token t0ken-v2"
        assert writes[0].headers["Content-Type"].startswith("text/plain")
        lines = [ln for r in writes for ln in r.body.decode().splitlines()]
        first = (await sandbox_rows(sb, store, TODAY))[0]
        assert f"IEC_Meter value={first['consumption']!r},export={first['backStream']!r} 1770674400000000000" in lines
        assert all(ln.startswith("IEC_Meter value=") and ",export=" in ln for ln in lines)
    finally:
        await h.stop()
        sb.stop()


async def test_home_assistant_discovery_and_state_on_mosquitto(http_recorder, mosquitto, store):
    sub = Subscriber(mosquitto.port, "homeassistant/sensor/+/config", "iec/#")
    h, sb = await start_flow({}, {"INFLUX_URL": http_recorder.url, "MQTT_PORT": str(mosquitto.port)}, store)
    try:
        await h.advance(10)
        topics = [f"homeassistant/sensor/iec_{p}_{k}/config" for p in ("today", "yesterday", "two_days_ago",
                                                                      "this_month") for k in ("consumption", "export")]
        topics += ["homeassistant/sensor/iec_bill_total_to_pay/config", "homeassistant/sensor/iec_last_invoice_amount/config"]
        want = [*topics, "iec/consumption/today", "iec/consumption/this_month", "iec/bill", "iec/status"]
        await until(lambda: all(t in sub.got for t in want), what="discovery and state")
        today = sub.json("homeassistant/sensor/iec_today_consumption/config")
        assert today["state_topic"] == "iec/consumption/today" and today["unit_of_measurement"] == "kWh"
        assert today["value_template"] == "{{ value_json.consumption }}" and today["device_class"] == "energy"
        assert today["device"]["identifiers"] == ["iec_meter"] and today["availability_topic"] == "iec/status"
        export = sub.json("homeassistant/sensor/iec_this_month_export/config")
        assert export["value_template"] == "{{ value_json.export }}" and export["state_topic"] == "iec/consumption/this_month"
        bill_cfg = sub.json("homeassistant/sensor/iec_bill_total_to_pay/config")
        assert (bill_cfg["device_class"], bill_cfg["unit_of_measurement"]) == ("monetary", "ILS")

        state = sub.json("iec/consumption/today")
        assert "intervals" not in state  # the rows go to InfluxDB, not into HA's state
        rows = await sandbox_rows(sb, store, TODAY)
        assert state["consumption"] == round(sum(r["consumption"] for r in rows), 3)
        assert state["export"] == round(sum(r["backStream"] for r in rows), 3)
        bill = sub.json("iec/bill")
        assert bill["total_amount_to_pay"] > 0 and bill["last_invoice"]["to_date"] == "2026-01-16"
        assert sub.got["iec/status"] == b"online"

        # the login expires for good: the alert lands on iec/login (retained)
        sb.revoke_refresh_tokens()
        await h.advance(45 * 60)
        await until(lambda: sub.got.get("iec/login") not in (None, b"ok"), what="the login alert")
        assert sub.got["iec/login"] == b"IEC login expired: run `meterflow login iec` again"
    finally:
        await h.stop()
        sb.stop()
        sub.close()
