"""The IEC node pack against the IEC sandbox: OTP login, refresh rules, the four periods, the
bill, and every bad input of the issue reaching a catch node. Flows run on the virtual clock;
the sandbox reads the same clock, so token expiry and "today" move with ``advance``."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # the plugin may not be installed
    sys.path.insert(0, str(SRC))

from meterflow_iec.client import IECClient, IECSession, Tokens, scrape_form  # noqa: E402
from meterflow_iec.const import LOGIN_EXPIRED  # noqa: E402
from meterflow_iec.login import login  # noqa: E402
from meterflow_iec.nodes import NODE_TYPES, epoch_ns, parse_reading  # noqa: E402
from meterflow_iec.sandbox import IECSandbox  # noqa: E402
from meterflow_iec.tokens import MemoryTokenStore, TokenStore  # noqa: E402

from meterflow.errors import AuthError, HttpError, ParseError  # noqa: E402
from meterflow.testing import Harness, registry_with  # noqa: E402

TZ = ZoneInfo("Asia/Jerusalem")
# 2026-02-10 12:07 local (UTC+2): 48 complete 15-minute intervals today.
T0 = datetime(2026, 2, 10, 12, 7, tzinfo=TZ).timestamp()
TODAY = date(2026, 2, 10)
REGISTRY = registry_with(*NODE_TYPES)  # works whether or not the pack is installed

FLOW = """
meterflow: 1
config:
  - {id: acct, type: iec-account, user_id: "123456782", okta_url: "${IEC_OKTA_URL}", api_url: "${IEC_API_URL}"
     %(extra)s}
nodes:
  - {id: cons, type: iec-consumption, account: acct, wires: {periods: [periods], points: [points]}}
  - {id: periods, type: junction}
  - {id: points, type: junction}
  - {id: bill, type: iec-bill, account: acct, wires: [bill_out]}
  - {id: bill_out, type: junction}
  - {id: devices, type: iec-devices, account: acct, wires: [devices_out]}
  - {id: devices_out, type: junction}
  - {id: customer, type: iec-customer, account: acct, wires: [customer_out]}
  - {id: customer_out, type: junction}
  - {id: contracts, type: iec-contracts, account: acct, wires: [contracts_out]}
  - {id: contracts_out, type: junction}
  - {id: refresh, type: iec-refresh, account: acct, wires: [refreshed]}
  - {id: refreshed, type: junction}
  - {id: every45, type: inject, repeat: 45m, wires: [refresh]}
  - {id: hourly, type: inject, repeat: 60m, wires: [cons]}
  - {id: catch, type: catch, wires: [caught]}
  - {id: caught, type: junction}
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private credential store for the test (the engine and TokenStore read the env)."""
    from cryptography.fernet import Fernet

    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.setenv("METERFLOW_KEY", Fernet.generate_key().decode())
    return TokenStore("iec")


def answers(*values, then=None):
    """An ``ask`` function giving these answers in order; records the prompts."""
    queue = list(values)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if then is not None and len(queue) == 1:
            then()
        return queue.pop(0)

    ask.prompts = prompts
    return ask


async def do_login(sb, store, now=None) -> Tokens:
    said: list[str] = []
    return await login(sb.id_number, store, okta_url=sb.okta_url, api_url=sb.api_url, ask=answers(sb.otp),
                       say=said.append, now=now or sb.now)


@asynccontextmanager
async def running(extra: str = "", logged_in: bool = True, store=None, **sandbox_kw):
    """A harness on the virtual clock at T0 and a sandbox reading that clock."""
    h = Harness(text=FLOW % {"extra": extra}, start_time=T0, registry=REGISTRY)
    with IECSandbox(port=0, now=h.clock.time, **sandbox_kw) as sb:
        h.env = {"IEC_OKTA_URL": sb.okta_url, "IEC_API_URL": sb.api_url}
        if logged_in:
            await do_login(sb, store, now=h.clock.time)
        async with h:
            yield h, sb


def token_requests(sb) -> list:
    return [r for r in sb.requests if r.path.endswith("/v1/token")]


def statuses(sb, fragment: str) -> list[int]:
    return [r.status for r in sb.requests if fragment.lower() in r.path.lower()]


async def raw_reading(sb, token: str, day: date, resolution: int) -> dict:
    """What the sandbox itself answers, to compare the nodes' numbers with."""
    body = {"contractNumber": sb.contract_id, "lastInvoiceDate": day.isoformat(), "fromDate": day.isoformat(),
            "resolution": resolution,
            "smartMetersList": [{"meterKind": "Backstream", "meterCode": sb.meter_code, "meterSerial": sb.meter_serial}]}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sb.api_url}/Consumption/RemoteReadingRange/{sb.contract_id}", json=body,
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["meterList"][0]


# ---- login -------------------------------------------------------------------------------------
async def test_login_with_otp_prompts_and_stores_tokens(store):
    with IECSandbox(port=0, now=lambda: T0) as sb:
        ask, said = answers(sb.id_number, sb.otp), []
        tokens = await login(None, store, okta_url=sb.okta_url, api_url=sb.api_url, ask=ask, say=said.append,
                             now=sb.now)
        assert ask.prompts == ["IEC user id (your ID number): ", "Code from the SMS: "]
        assert "05XXXXX67@sns.iec.co.il" in said[0]
        assert said[-1].startswith("Logged in as Israel Israeli (BP ") and "'iec'" in said[-1]
        # authn, send the SMS (stateToken only), verify the code, authorize, token, the API check
        steps = [(r.method, r.path.split("/")[-1]) for r in sb.requests]
        assert steps == [("POST", "authn"), ("POST", "verify"), ("POST", "verify"), ("GET", "authorize"),
                         ("POST", "token"), ("GET", "customer")]
        assert "passCode" not in sb.requests[1].body and sb.requests[2].body["passCode"] == "***"
        assert sb.requests[3].query["code_challenge_method"] == "S256"
        assert store.info() == {"user_id": sb.id_number, "okta_url": sb.okta_url}
    stored = store.load()
    assert stored == tokens and stored.expires_at == T0 + 3600


async def test_wrong_otp_is_asked_again(store):
    with IECSandbox(port=0, now=lambda: T0) as sb:
        said: list[str] = []
        await login(sb.id_number, store, okta_url=sb.okta_url, api_url=sb.api_url,
                    ask=answers("000000", sb.otp), say=said.append, now=sb.now)
        assert any("wrong SMS code: Your passcode doesn't match our records" in s for s in said)
        assert store.load() is not None


async def test_three_wrong_codes_fail_and_store_nothing(store):
    with IECSandbox(port=0, now=lambda: T0) as sb:
        with pytest.raises(AuthError, match=r"wrong SMS code.*3 wrong codes; run `meterflow login iec` again"):
            await login(sb.id_number, store, okta_url=sb.okta_url, api_url=sb.api_url,
                        ask=answers("1", "2", "3"), say=lambda s: None, now=sb.now)
    assert store.load() is None


async def test_expired_otp_session(store):
    with IECSandbox(port=0, now=lambda: T0, state_token_ttl=300) as sb:
        slow = answers(sb.otp, then=lambda: sb.advance(301))  # the user takes 5 minutes to type
        with pytest.raises(AuthError, match="login session expired") as e:
            await login(sb.id_number, store, okta_url=sb.okta_url, api_url=sb.api_url, ask=slow,
                        say=lambda s: None, now=sb.now)
        assert e.value.details["code"] == "E0000011"
    assert store.load() is None


async def test_unknown_user_id(store):
    with IECSandbox(port=0, now=lambda: T0) as sb:
        with pytest.raises(AuthError, match="IEC does not know this user id"):
            await login("999999998", store, okta_url=sb.okta_url, api_url=sb.api_url, ask=answers(),
                        say=lambda s: None)


def test_login_cli_reads_stdin(tmp_path):
    """`meterflow login iec` as a user runs it: the id and the code typed on stdin."""
    from cryptography.fernet import Fernet

    pytest.importorskip("meterflow_iec.plugin")
    from importlib.metadata import entry_points

    if not any(ep.name == "iec" for ep in entry_points(group="meterflow")):
        pytest.skip("meterflow-iec is not installed (pip install -e plugins/iec)")
    env = {**os.environ, "METERFLOW_CREDENTIALS": str(tmp_path / "c.json"), "METERFLOW_KEY": Fernet.generate_key().decode()}
    with IECSandbox(port=0) as sb:
        r = subprocess.run([sys.executable, "-m", "meterflow.cli", "login", "iec", "--okta-url", sb.okta_url,
                            "--api-url", sb.api_url, "--credential", "home"],
                           input=f"{sb.id_number}\n{sb.otp}\n", capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "IEC sent a code to 05XXXXX67@sns.iec.co.il" in r.stdout and "Logged in as Israel Israeli" in r.stdout
        r2 = subprocess.run([sys.executable, "-m", "meterflow.cli", "login", "iec", "--okta-url", sb.okta_url,
                             "--user-id", sb.id_number], input="1\n2\n3\n", capture_output=True, text=True,
                            env=env, timeout=60)
        assert r2.returncode == 1 and "3 wrong codes" in r2.stderr and "Traceback" not in r2.stderr
    from meterflow.credentials import CredentialStore

    assert set(CredentialStore(tmp_path / "c.json", key=env["METERFLOW_KEY"]).names()["home"]) == {
        "access_token", "expires_at", "id_token", "okta_url", "refresh_token", "user_id"}


def test_cli_registers_login_and_sandbox():
    import argparse

    from meterflow_iec import plugin

    from meterflow.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "login" not in sub.choices:  # not installed: call the hook ourselves
        plugin.meterflow_commands(sub)
    login_parser = sub.choices["login"]
    args = parser.parse_args(["login", "iec", "--sandbox", "--user-id", "1"])
    assert args.func.__name__ == "run_login" and args.sandbox and login_parser is not None
    assert "iec" in sub.choices["sandbox"].sandboxes
    plugin.meterflow_commands(sub)  # a second registration is harmless
    assert "iec" in sub.choices["sandbox"].sandboxes


# ---- data --------------------------------------------------------------------------------------
async def test_four_periods_import_export_and_points(store):
    async with running(store=store) as (h, sb):
        await h.send("cons", {"payload": None})
        assert h.errors == [] and h.messages("caught") == []
        by_period = {m["topic"]: m["payload"] for m in h.messages("periods")}
        assert list(by_period) == ["today", "yesterday", "two_days_ago", "this_month"]
        token = store.load().id_token
        for period, day, res in (("today", TODAY, 1), ("yesterday", TODAY - timedelta(1), 1),
                                 ("two_days_ago", TODAY - timedelta(2), 1), ("this_month", TODAY, 3)):
            expected = await raw_reading(sb, token, day, res)
            got = by_period[period]
            assert got["consumption"] == expected["totalConsumptionForPeriod"] > 0
            assert got["export"] == expected["totalBackStreamForPeriod"] > 0
            assert got["date"] == day.isoformat() and got["unit"] == "kWh"
            assert len(got["intervals"]) == len(expected["periodConsumptions"])
        assert by_period["this_month"]["resolution"] == "monthly" and len(by_period["this_month"]["intervals"]) == 10
        assert len(by_period["today"]["intervals"]) == 48  # 00:00..12:00 local, complete ones only

        points = {m["topic"]: m["payload"] for m in h.messages("points")}
        assert list(points) == ["today", "yesterday", "two_days_ago"]  # never the month
        today_rows = (await raw_reading(sb, token, TODAY, 1))["periodConsumptions"]
        assert [p["time"] for p in points["today"]] == [epoch_ns(r["interval"]) for r in today_rows]
        first = points["today"][0]
        assert first == {"measurement": "IEC_Meter", "time": 1770674400 * 10**9,  # 2026-02-10 00:00 IST
                         "fields": {"value": today_rows[0]["consumption"], "export": today_rows[0]["backStream"]}}
        assert sum(len(v) for v in points.values()) == 48 + 96 + 96


async def test_hourly_schedule_and_token_refresh_on_virtual_clock(store):
    async with running(store=store) as (h, sb):
        first_refresh = store.load().refresh_token
        await h.advance(45 * 60)
        assert len(h.messages("refreshed")) == 1
        assert store.load().refresh_token != first_refresh  # the rotated token is stored
        await h.advance(5 * 3600)  # 5 h: 5 consumption runs, refreshes at 90, 135, ... minutes
        assert len(h.messages("cons")) == 5 and len(h.messages("refreshed")) == 7
        assert h.messages("caught") == [] and h.errors == []
        assert 401 not in statuses(sb, "/api/")  # the scheduled refresh kept the id_token fresh
        assert h.payloads("refreshed")[-1]["expires_in"] == 3600
        # a later run sees "today" with more intervals: 12:07 + 5 h = 17:07 -> 68
        today = [m for m in h.messages("periods") if m["topic"] == "today"]
        assert [len(m["payload"]["intervals"]) for m in today] == [52, 56, 60, 64, 68]


async def test_expired_token_refreshes_before_the_call(store):
    """Without the scheduled refresh: an id_token past its expiry is refreshed first (no 401)."""
    async with running(store=store) as (h, sb):
        await h.clock.advance(2 * 3600)  # timers fire; drop their output and look at one explicit run
        before = len(token_requests(sb))
        await h.send("bill", {})
        assert h.messages("caught") == [] and len(h.messages("bill_out")) == 1
        assert len(token_requests(sb)) == before  # the 45-minute refresh had it covered
        store.store.set("iec", "expires_at", str(int(h.clock.time()) - 1))  # pretend it expired
        session = h.node("acct").session
        session.tokens = None  # re-read the store
        await h.send("bill", {})
        assert len(token_requests(sb)) == before + 1 and statuses(sb, "/api/").count(401) == 0


async def test_401_refreshes_once_and_retries(store):
    async with running(store=store, token_ttl=600) as (h, sb):
        # We believe the id_token is good for an hour; IEC says it expired after 10 minutes.
        store.store.set("iec", "expires_at", str(int(T0 + 3600)))
        await h.clock.advance(700)
        await h.send("customer", {})
        assert h.messages("caught") == []
        assert h.payloads("customer_out")[0]["bp_number"] == sb.bp_number
        assert statuses(sb, "/api/customer") == [200, 401, 200]  # login check, then 401 -> retry
        assert len(token_requests(sb)) == 2  # the login and one refresh


async def test_customer_contracts_devices(store):
    async with running(store=store) as (h, sb):
        await h.send("customer", {})
        await h.send("contracts", {})
        await h.send("devices", {})
        assert h.messages("caught") == []
        customer = h.payloads("customer_out")[0]
        assert customer["bp_number"] == sb.bp_number and customer["first_name"] == "Israel"
        contracts = h.payloads("contracts_out")[0]
        assert contracts["contracts"][0]["contract_id"] == sb.contract_id and contracts["bp_number"] == sb.bp_number
        devices = h.payloads("devices_out")[0]
        assert (devices["meter_serial"], devices["meter_code"]) == (sb.meter_serial, sb.meter_code)


async def test_bill(store):
    async with running(store=store) as (h, sb):
        await h.send("bill", {"topic": "bill"})
        assert h.messages("caught") == []
        msg = h.messages("bill_out")[0]
        bill = msg["payload"]
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{sb.api_url}/ElectricBillsDrawers/ElectricBills/{sb.contract_id}/{sb.bp_number}",
                            headers={"Authorization": f"Bearer {store.load().id_token}"})
        raw = r.json()["data"]
        assert msg["topic"] == "bill"
        assert bill["total_amount_to_pay"] == raw["totalAmountToPay"] > 0
        assert bill["total_invoices_to_pay"] == raw["totalInvoicesToPay"] == 1
        inv = raw["invoices"][0]
        last = bill["last_invoice"]
        assert last["amount_origin"] == inv["amountOrigin"] and last["amount_to_pay"] == inv["amountToPay"]
        assert (last["from_date"], last["to_date"]) == ("2025-11-17", "2026-01-16")
        assert last["days_period"] == inv["daysPeriod"] and last["amount_paid"] == 0.0
        assert last["last_date"] == "2026-02-07" and bill["last_date_to_pay"] == "2026-02-07"
        assert last["contract_id"] == sb.contract_id  # an int in the invoice, the padded id here
        assert isinstance(inv["contractNumber"], int)
        # the next reading asks with lastInvoiceDate = the day after the last invoice
        await h.send("cons", {})
        reading = [r for r in sb.requests if "remotereadingrange" in r.path.lower()][-1]
        assert reading.body["lastInvoiceDate"] == "2026-01-17"


# ---- bad input -----------------------------------------------------------------------------------
async def test_empty_reading_list_sends_no_point_and_tells_catch(store):
    async with running(store=store, empty_days={TODAY}) as (h, sb):
        await h.send("cons", {"payload": None})
        [err] = h.messages("caught")
        assert err["error"]["kind"] == "nodata" and err["topic"] == "today"
        assert err["error"]["message"] == "IEC has no readings for today (2026-02-10) yet; nothing sent"
        assert err["error"]["period"] == "today"
        assert [m["topic"] for m in h.messages("periods")] == ["yesterday", "two_days_ago", "this_month"]
        assert [m["topic"] for m in h.messages("points")] == ["yesterday", "two_days_ago"]
        assert all(p["fields"]["value"] is not None for m in h.messages("points") for p in m["payload"])


async def test_contract_not_yours(store):
    async with running(', contract_id: "000999999999"', store=store) as (h, sb):
        await h.send("devices", {})
        await h.send("cons", {})
        errors = [m["error"] for m in h.messages("caught")]
        assert len(errors) == 2 and {e["source"]["id"] for e in errors} == {"devices", "cons"}
        for e in errors:
            assert e["kind"] == "http" and e["status"] == 401
            assert e["message"] == "IEC devices: Contract is not associated with you. (HTTP 401)"
            assert e["iec_error"] == "Contract is not associated with you."
        assert h.messages("devices_out") == [] and h.messages("points") == []


async def test_expired_refresh_token_alert_reaches_catch_without_a_loop(store):
    async with running(store=store) as (h, sb):
        sb.revoke_refresh_tokens()
        await h.advance(45 * 60)
        [alert] = h.messages("caught")
        assert alert["error"]["kind"] == "auth" and alert["error"]["message"] == LOGIN_EXPIRED
        assert alert["error"]["source"]["id"] == "refresh"
        spent = len(token_requests(sb))
        await h.advance(4 * 3600)  # every later run fails fast, without asking Okta again
        assert len(token_requests(sb)) == spent
        assert {m["error"]["message"] for m in h.messages("caught")} == {LOGIN_EXPIRED}
        assert len(h.messages("caught")) == 1 + 5 + 4  # one per refresh and per consumption run
        assert h.errors == [] and h.messages("points") == []
        # a new `meterflow login iec` is picked up without a restart
        await do_login(sb, store, now=h.clock.time)
        await h.send("refresh", {})
        await h.send("cons", {})
        assert len(h.messages("refreshed")) == 1 and len(h.messages("points")) == 3
        assert len(h.messages("caught")) == 10


async def test_no_login_yet(store):
    async with running(store=store, logged_in=False) as (h, sb):
        await h.send("cons", {})
        [err] = h.messages("caught")
        assert err["error"]["kind"] == "auth"
        assert err["error"]["message"] == "no IEC login in credential 'iec': run `meterflow login iec` first"
        assert sb.requests == []


async def test_iec_error_body_even_after_refresh_is_auth():
    """IEC answering {"Error": "Unauthorized", "Code": 401} to a fresh token: one refresh, then AuthError."""
    calls = {"api": 0, "token": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/token"):
            calls["token"] += 1
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3600, "access_token": "a",
                                             "scope": "openid", "refresh_token": f"r{calls['token']}",
                                             "id_token": f"i{calls['token']}"})
        calls["api"] += 1
        return httpx.Response(401, json={"Error": "Unauthorized", "Code": 401, "Rid": "x"})

    keeper = MemoryTokenStore(Tokens("i0", "a", "r0", expires_at=T0 + 3600))
    client = IECClient("http://okta.test", "http://api.test", now=lambda: T0, transport=httpx.MockTransport(handler))
    session = IECSession(client, keeper, now=lambda: T0)
    with pytest.raises(AuthError, match=r"IEC customer: Unauthorized \(HTTP 401\) even with a fresh token"):
        await session.call(client.customer)
    assert calls == {"api": 2, "token": 1} and keeper.tokens.refresh_token == "r1" and keeper.saved == 1
    await client.aclose()


async def test_iec_error_bodies_and_non_json():
    answers_ = iter([httpx.Response(500, json={"Error": "Internal error", "Code": 500, "Rid": "r"}),
                     httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"}),
                     httpx.Response(200, json={"data": None, "reponseDescriptor": {"isSuccess": False, "code": "12",
                                                                                   "description": "No data"}})])
    client = IECClient("http://okta.test", "http://api.test", transport=httpx.MockTransport(lambda r: next(answers_)))
    with pytest.raises(HttpError, match=r"IEC customer: Internal error \(HTTP 500\)") as e:
        await client.customer("t")
    assert e.value.status == 500 and e.value.kind == "http"
    with pytest.raises(ParseError, match="IEC customer: expected JSON, got text/html"):
        await client.customer("t")
    with pytest.raises(HttpError, match="isSuccess=false: No data"):
        await client.contracts("t", "1")
    await client.aclose()


def test_form_scrape_undoes_okta_escapes():
    page = ('<form method="post" action="com.iecrn:/">\n'
            '<input type="hidden" name="code" value="abc\\x2Ddef"/>\n'
            '<input type="hidden" name="state" value="s&amp;t"/>\n'
            '<input type="hidden" name="id_token" value="eyJ\\x2D.x\\x2Dy"/></form>')
    assert scrape_form(page) == {"code": "abc-def", "state": "s&t", "id_token": "eyJ-.x-y"}


def test_a_bad_row_spoils_the_whole_period():
    good = {"interval": "2026-02-09T22:00:00+00:00", "consumption": 0.1, "backStream": 0.0, "status": 0}
    data = {"meterList": [{"meterSerial": "1", "totalConsumptionForPeriod": 0.2, "totalBackStreamForPeriod": 0.0,
                           "periodConsumptions": [good, dict(good, consumption=None)]}]}
    with pytest.raises(ParseError, match=r"row 1 \(2026-02-09T22:00:00\+00:00\) consumption: expected a number"):
        parse_reading(data, "1")
    with pytest.raises(ParseError, match="no meterList"):
        parse_reading({"reportStatus": 0}, "1")
    legacy = parse_reading({"totalConsumptionForPeriod": 1.5, "data": [
        {"status": 0, "date": "2023-07-20T00:00:00.000000", "value": 0.325}]}, "1")
    assert legacy["rows"][0]["time"] == epoch_ns("2023-07-19T21:00:00+00:00") and legacy["export"] is None


def test_check_flags_bad_config():
    from meterflow.flowfile import load_flow

    text = """
meterflow: 1
config:
  - {id: acct, type: iec-account, okta_url: "iec-ext.okta.com", credential: "my creds"}
nodes:
  - {id: cons, type: iec-consumption, account: acct, periods: [today, tomorrow]}
  - {id: bill, type: iec-bill, account: nope}
"""
    spec = load_flow("x.yaml", REGISTRY, text=text, env={})
    messages = "\n".join(p.message for p in spec.errors)
    assert "okta_url must start with http:// or https://" in messages
    assert "invalid credential name 'my creds'" in messages
    assert "'tomorrow' is not one of" in messages
    assert "unknown iec-account config node 'nope'" in messages
