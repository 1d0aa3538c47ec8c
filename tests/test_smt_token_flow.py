"""flows/smt-token.yaml end to end: the SMT sandbox in token mode over real TLS, reading the
harness's virtual clock, and a real mosquitto.

Every wait of the flow (cron, 10 s / 5 s / 30 s polls, back-off) passes on the virtual clock;
the sandbox and the broker are real, so the tests look at what the sandbox received (its
request log, with times on the same clock) and at what the broker passed on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from services import until
from smt_token_env import FLOW, T0, SmtTokenRig

from meterflow.credentials import CredentialStore

pytest.importorskip("paho.mqtt.client")

CYCLE = 30  # the first :55 comes 30 s after the start (T0 is 10:54:30 America/Chicago)
FIRST_READ, SECOND_READ = b"23459.133", b"23460.383"  # the sandbox's register, +1.25 kWh per ODR


@pytest.fixture
async def rig_factory(tmp_path, monkeypatch, mosquitto):
    rigs: list[SmtTokenRig] = []

    async def make(sandbox: dict | None = None, env: dict | None = None, start: bool = True) -> SmtTokenRig:
        rig = SmtTokenRig(tmp_path, monkeypatch, mosquitto, sandbox=sandbox, env=env)
        rigs.append(rig)
        if start:
            await rig.start()
        return rig

    yield make
    for rig in rigs:
        await rig.close()


def times(rig: SmtTokenRig, endpoint: str) -> list[float]:
    """When each request to ``endpoint`` arrived, in seconds after the first scheduled read."""
    return [round(r.at - (T0 + CYCLE), 3) for r in rig.requests(endpoint)]


def gaps(values: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(values, values[1:], strict=False)]


def alerts(rig: SmtTokenRig) -> list[dict]:
    return [json.loads(p) for p in rig.published("alert")]


# ------------------------------------------------------------------------------------------ check
def test_check_is_clean_on_a_bare_machine(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERFLOW_", "SMT_", "HA_"))}
    env["METERFLOW_CREDENTIALS"] = str(tmp_path / "nothing-here.json")  # no store on this machine
    run = [sys.executable, "-m", "meterflow.cli", "check", str(FLOW)]
    r = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0 warning(s)" in out, out  # the credentials node reads the store at start, not at check
    # With Home Assistant enabled, its token is the one secret check cannot find: a warning.
    r = subprocess.run(run, capture_output=True, text=True, env={**env, "HA_DISABLED": "false"}, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    warnings = [line for line in out.splitlines() if "warning:" in line]
    assert warnings and all("no credential 'ha'" in line for line in warnings), out


# ------------------------------------------------------------------------------------------ happy path
async def test_happy_path_token_odr_pending_reading(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 2})
    await rig.h.advance(CYCLE + 60)
    assert rig.sequence() == ["token 200", "odr 200", "odrstatus 200", "odrstatus 200", "odrstatus 200"]
    assert times(rig, "token") == [0] and times(rig, "odr") == [0]
    assert times(rig, "odrstatus") == [10, 15, 20]  # 10 s after the ODR, then every 5 s while PEN

    token, odr, status = rig.requests("token")[0], rig.requests("odr")[0], rig.requests("odrstatus")[0]
    assert token.json == {"username": "smt-user", "password": "***"}  # JSON body, from the store
    assert "authorization" not in token.headers
    assert odr.headers["authorization"] == "Bearer ***" and status.headers["authorization"] == "Bearer ***"
    assert odr.json["ESIID"] == "10443720004529871" and odr.json["MeterNumber"] == "123456789LG"
    assert odr.json["requestorID"] == "smt-user" and odr.json["SMTTermsandConditions"] == "Y"
    assert status.json["correlationId"] == "100001"
    assert all(r.client_cert is None for r in rig.requests())  # no client certificate by default

    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]
    assert rig.published("correlationid") == [b"100001"]
    assert rig.published("alert") == []
    assert rig.retained("reading") == FIRST_READ
    assert rig.h.flow_context.get("readrequested") == 0
    assert rig.h.errors == []


async def test_no_response_headers_leak_into_the_next_request(rig_factory):
    # Content-Length framing (the sandbox's default) is where the export's leak cut bodies.
    rig = await rig_factory(sandbox={"pending_polls": 1, "chunked": False})
    rig.sb.fail_next_odr(1)  # "1" -> a second ODR: the re-request the 2023 flow broke
    await rig.h.advance(CYCLE + 120)
    assert rig.sequence() == ["token 200", "odr 200", "odrstatus 200", "odrstatus 200",
                              "odr 200", "odrstatus 200", "odrstatus 200"]
    for r in rig.requests():
        assert r.body_error is None and r.json is not None, r
        sent = {name.lower() for name, _ in r.raw_headers}
        assert not sent & {"date", "server", "transfer-encoding", "set-cookie"}, r.raw_headers
        if r.path.startswith("/v2/odr"):  # (the token body's length cannot be checked: its password is redacted)
            assert r.headers["content-length"] == str(len(json.dumps(r.json, separators=(",", ":")))), r
    await rig.finish()
    assert rig.published("reading") == [SECOND_READ]


# ------------------------------------------------------------------------------------------ the token
async def test_token_reused_across_two_hourly_cycles(rig_factory):
    rig = await rig_factory(sandbox={"token_ttl": 3 * 3600})
    await rig.h.advance(CYCLE + 3600 + 60)
    assert len(rig.requests("token")) == 1
    assert times(rig, "odr") == [0, 3600]
    assert all(r.status == 200 for r in rig.requests())
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ, SECOND_READ]
    assert rig.published("correlationid") == [b"100001", b"100002"]


async def test_token_expired_between_cycles_reauthenticates_before_the_odr(rig_factory):
    rig = await rig_factory()  # SMT's tokens last an hour: the next :55 is past the renewal time
    await rig.h.advance(CYCLE + 3600 + 60)
    seq = rig.sequence()
    assert seq == ["token 200", "odr 200", "odrstatus 200", "odrstatus 200", "odrstatus 200"] * 2
    assert times(rig, "token") == [0, 3600] and times(rig, "odr") == [0, 3600]
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ, SECOND_READ]


async def test_token_renewed_mid_poll_before_it_expires(rig_factory):
    # A short-lived token (2 minutes; renewed half-way) while SMT answers PEN for a long time:
    # the poll loop gets a new token before the old one dies and never sends an expired one.
    rig = await rig_factory(sandbox={"token_ttl": 120, "pending_polls": 40})
    await rig.h.advance(CYCLE + 150)
    assert times(rig, "token") == [0, 60, 120]
    assert all(r.status == 200 for r in rig.requests())  # no 401
    assert len(rig.requests("odr")) == 1
    await rig.h.advance(90)  # the reading comes with the 41st poll, at 210 s
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]


async def test_wrong_password_is_bounded_and_alerted(rig_factory):
    rig = await rig_factory(start=False)
    CredentialStore().set("smt", "password", "not-the-password")
    await rig.start()
    await rig.h.advance(CYCLE + 3600 - 60)
    assert [r.status for r in rig.requests()] == [401] * 4  # the token only: no ODR without one
    assert gaps(times(rig, "token")) == [60, 120, 240]
    await rig.finish()
    [alert] = alerts(rig)
    assert "401" in alert["error"]


async def test_401_mid_poll_reauthenticates_once_and_publishes_once(rig_factory):
    rig = await rig_factory(sandbox={"token_ttl": 300, "pending_polls": 4})
    await rig.h.advance(CYCLE + 12)  # token, ODR, first poll (PEN)
    # SMT's clock jumps 5 minutes ahead: the token the flow holds (good for 4 more minutes by
    # its own clock) is expired for SMT, which answers the next poll with 401.
    rig.skew = 300
    await rig.h.advance(120)
    assert rig.sequence() == ["token 200", "odr 200", "odrstatus 200", "odrstatus 401", "token 200",
                              "odrstatus 200", "odrstatus 200", "odrstatus 200", "odrstatus 200"]
    assert times(rig, "odrstatus")[1:3] == [300 + 15] * 2  # the same poll again at once (SMT's clock)
    assert len(rig.requests("odr")) == 1
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]
    assert rig.published("correlationid") == [b"100001"]
    assert rig.h.errors == []


async def test_a_new_read_ends_the_old_poll_loop(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 6, "rate_limit_per_hour": 5})
    await rig.h.advance(CYCLE + 12)  # read 100001 is pending
    await rig.h.trigger("request-now")  # a new read replaces it (e.g. by hand)
    await rig.h.advance(120)
    polled = [r.json["correlationId"] for r in rig.requests("odrstatus")]
    last_old = max(i for i, c in enumerate(polled) if c == "100001")
    assert polled[:last_old + 1] == ["100001"] and set(polled[last_old + 1:]) == {"100002"}
    assert polled.count("100002") == 7  # its own loop only: six PEN, then the reading
    await rig.finish()
    assert rig.published("reading") == [SECOND_READ]
    assert rig.published("correlationid") == [b"100002"]


# ------------------------------------------------------------------------------------------ failures
async def test_status_1_requests_again_after_a_minute(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 1})
    rig.sb.fail_next_odr(1)
    await rig.h.advance(CYCLE + 120)
    assert times(rig, "odr") == [0, 75]  # PEN at 10 s, "1" at 15 s; the export's one minute later
    assert len(rig.requests("token")) == 1  # the same token
    await rig.finish()
    assert rig.published("reading") == [SECOND_READ]
    assert rig.published("correlationid") == [b"100002"]
    assert rig.published("alert") == []


async def test_status_1_every_time_is_bounded_by_smts_hourly_limit(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 0})
    rig.sb.fail_next_odr(100)
    await rig.h.advance(CYCLE + 3000)
    # two ODRs end in "1"; the third is refused by SMT's two-per-hour limit: alert, no more tries
    assert times(rig, "odr") == [0, 70, 200]  # "1" at 10 s, then 60 s; "1" at 80 s, then 120 s
    assert [r.status for r in rig.requests("odr")] == [200, 200, 200]
    await rig.finish()
    assert rig.published("reading") == []
    [alert] = alerts(rig)
    assert "limit of two On Demand Read" in alert["error"]
    assert rig.h.flow_context.get("readrequested") == 0


async def test_odrstatus_http_500_and_garbled_json_recover(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 1})
    rig.sb.fail_next("http500", path="odrstatus")
    rig.sb.fail_next("garbled", path="odrstatus")
    await rig.h.advance(CYCLE + 120)
    assert [r.status for r in rig.requests("odrstatus")] == [500, 200, 200, 200]
    assert [r.fault for r in rig.requests("odrstatus")] == ["http500", "garbled", None, None]
    assert times(rig, "odrstatus") == [10, 40, 70, 75]  # 30 s after each failure; the read stays pending
    assert len(rig.requests("odr")) == 1  # no second ODR for a status failure
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]
    assert rig.h.flow_context.get("readrequested") == 0
    assert rig.h.errors == []  # all caught


async def test_a_read_pending_for_ever_is_bounded(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 10_000, "rate_limit_per_hour": 10}, env={"SMT_MAX_POLLS": "8"})
    await rig.h.advance(CYCLE + 3600 + 12)
    assert times(rig, "odrstatus") == [10, 15, 20, 25, 30, 35, 40, 45, 3610]  # 8 polls, then the next hour
    assert times(rig, "odr") == [0, 3600]
    assert rig.h.flow_context.get("readrequested") == 1  # the second read is pending
    await rig.finish()
    [alert] = alerts(rig)
    assert "too many status polls" in alert["error"] and alert["correlationId"] == "100001"
    assert rig.published("reading") == []


async def test_odr_endpoint_down_retries_with_backoff_and_stops(rig_factory):
    rig = await rig_factory()
    rig.sb.fail_next("http500", path="odr", count=1000)
    await rig.h.advance(CYCLE + 2 * 3600 - 60)
    odr = times(rig, "odr")
    # per hour: the scheduled try and three retries, 1, 2 and 4 minutes apart; then the schedule
    assert odr == [0, 60, 180, 420, 3600, 3660, 3780, 4020]
    assert gaps(odr[:4]) == [60, 120, 240]
    assert len(rig.requests()) == len(odr) + 2  # plus one token per hour: no tight loop anywhere
    await rig.finish()
    assert [a["error"] for a in alerts(rig)] == [alerts(rig)[0]["error"]] * 2
    assert "500" in alerts(rig)[0]["error"]
    assert rig.published("reading") == []


# ------------------------------------------------------------------------------------------ restart
async def test_restart_mid_poll_resumes_without_a_second_odr(rig_factory):
    rig = await rig_factory(sandbox={"pending_polls": 3})
    await rig.h.advance(CYCLE + 12)  # token, ODR, first poll (PEN)
    assert rig.sequence() == ["token 200", "odr 200", "odrstatus 200"]
    await rig.restart(after=60)  # killed at 10:55:12, started again at 10:56:12
    await rig.h.advance(60)
    assert rig.sequence() == ["token 200", "odr 200"] + ["odrstatus 200"] * 4  # same token, same read
    assert times(rig, "odrstatus")[1:] == [74, 79, 84]  # 2 s after the start, then every 5 s
    assert {r.json["correlationId"] for r in rig.requests("odrstatus")} == {"100001"}
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]
    assert rig.published("correlationid") == [b"100001"]


async def test_clean_stop_mid_poll_and_mid_backoff_sends_no_burst(rig_factory):
    # At shutdown delay nodes release what they hold at once; the flow drops a poll or a retry
    # that did not wait its time, instead of sending it (and what loops behind it) to SMT.
    rig = await rig_factory(sandbox={"pending_polls": 3})
    await rig.h.advance(CYCLE + 12)  # holding the second poll (due at 15 s)
    await rig.restart(after=60, crash=False)
    assert rig.sequence() == ["token 200", "odr 200", "odrstatus 200"]  # nothing sent while stopping
    await rig.h.advance(60)
    assert times(rig, "odrstatus") == [10, 74, 79, 84]
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]

    rig = await rig_factory()
    rig.sb.fail_next("http500", path="odr", count=10)
    await rig.h.advance(CYCLE + 30)  # the first ODR failed; the retry is due at 60 s
    await rig.h.stop()
    assert len(rig.requests("odr")) == 1


# ------------------------------------------------------------------------------------------ Home Assistant
async def test_home_assistant_gets_the_read_date_when_enabled(rig_factory, http_recorder):
    http_recorder.default = (200, {"Content-Type": "application/json"}, b"[]")
    rig = await rig_factory(sandbox={"pending_polls": 0}, env={"HA_DISABLED": "false", "HA_URL": http_recorder.url},
                            start=False)
    CredentialStore().set("ha", "token", "ha-long-lived-token")
    await rig.start()
    await rig.h.advance(CYCLE + 20)
    await until(lambda: http_recorder.requests, what="the Home Assistant call")
    [call] = http_recorder.requests
    assert (call.method, call.path) == ("POST", "/api/services/input_datetime/set_datetime")
    assert call.headers["Authorization"] == "Bearer ha-long-lived-token"
    assert json.loads(call.body) == {"entity_id": "input_datetime.energy_last_read", "datetime": "2025-10-06 10:55:10"}
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]


# ------------------------------------------------------------------------------------------ certificate
async def test_optional_client_certificate_is_sent_when_configured(rig_factory):
    # "both": the sandbox asks for a certificate but does not require one, and records it.
    rig = await rig_factory(sandbox={"mode": "both"}, start=False)
    cert, key = rig.sb.issue_client_cert("meter")  # issued by the sandbox's CA and registered
    rig.env.update(SMT_CERT=cert, SMT_KEY=key)
    await rig.start()
    await rig.h.advance(CYCLE + 60)
    [fingerprint] = rig.sb.registered_fingerprints
    assert [r.client_cert for r in rig.requests()] == [fingerprint] * 5
    await rig.finish()
    assert rig.published("reading") == [FIRST_READ]
