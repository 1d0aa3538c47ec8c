"""Tests for the IEC sandbox: Okta login with OTP and PKCE, tokens, IEC API data and errors."""

from __future__ import annotations

import base64
import codecs
import json
import logging
import re
import secrets
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # the plugin may not be installed
    sys.path.insert(0, str(SRC))

from meterflow_iec.sandbox import CLIENT_ID, REDIRECT_URI, SCOPE, IECSandbox, pkce_challenge  # noqa: E402

TZ = ZoneInfo("Asia/Jerusalem")
# 2026-02-10 12:07 local (UTC+2): 48 complete 15-minute intervals today.
T0 = datetime(2026, 2, 10, 12, 7, tzinfo=TZ).timestamp()


@pytest.fixture
def sb():
    with IECSandbox(port=0, now=lambda: T0, state_token_ttl=300, token_ttl=3600) as sandbox:
        yield sandbox


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as c:
        yield c


def start_otp(sb, client):
    r = client.post(f"{sb.okta_url}/api/v1/authn", json={"username": f"{sb.id_number}@iec.co.il"})
    assert r.status_code == 200, r.text
    body = r.json()
    factor = body["_embedded"]["factors"][0]
    r = client.post(factor["_links"]["verify"]["href"], json={"stateToken": body["stateToken"]})
    assert r.status_code == 200 and r.json()["factorResult"] == "CHALLENGE"
    return body["stateToken"], factor["_links"]["verify"]["href"]


def scrape(page: str, name: str) -> str | None:
    # What py-iec-api does: undo Okta's \x2D escapes, then one hidden input per line.
    text = codecs.decode(page, "unicode-escape")
    found = re.findall(rf'<input type="hidden" name="{name}" value="(.+)"\/>', text)
    return found[0] if found else None


def authorize(sb, client, session_token, verifier):
    r = client.get(f"{sb.okta_url}/oauth2/default/v1/authorize", params={
        "client_id": CLIENT_ID, "response_type": "id_token code", "response_mode": "form_post",
        "scope": SCOPE, "redirect_uri": REDIRECT_URI, "state": "123abc", "nonce": "abc123",
        "code_challenge_method": "S256", "sessionToken": session_token,
        "code_challenge": pkce_challenge(verifier)})
    assert r.status_code == 200
    return r.text


def login(sb, client) -> dict:
    state_token, verify = start_otp(sb, client)
    r = client.post(verify, json={"stateToken": state_token, "passCode": sb.otp})
    assert r.json()["status"] == "SUCCESS"
    verifier = secrets.token_urlsafe(48)
    code = scrape(authorize(sb, client, r.json()["sessionToken"], verifier), "code")
    r = client.post(f"{sb.okta_url}/oauth2/default/v1/token", data={
        "client_id": CLIENT_ID, "code_verifier": verifier, "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI, "code": code})
    assert r.status_code == 200, r.text
    return r.json()


def refresh(sb, client, token):
    return client.post(f"{sb.okta_url}/oauth2/default/v1/token", data={
        "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "refresh_token": token,
        "grant_type": "refresh_token", "scope": SCOPE})


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def api(sb, client, tokens, method, path, **kw):
    return client.request(method, f"{sb.api_url}/{path}",
                          headers={"Authorization": f"Bearer {tokens['id_token']}"}, **kw)


def reading(sb, client, tokens, from_date, resolution, contract=None):
    return api(sb, client, tokens, "POST", f"Consumption/RemoteReadingRange/{contract or sb.contract_id}", json={
        "contractNumber": sb.contract_id, "lastInvoiceDate": "2026-01-17", "fromDate": from_date,
        "resolution": resolution,
        "smartMetersList": [{"meterKind": "Backstream", "meterCode": sb.meter_code, "meterSerial": sb.meter_serial}]})


# -- Okta -------------------------------------------------------------------------------------


def test_full_login_and_signed_id_token(sb, client, caplog):
    caplog.set_level(logging.INFO, logger="meterflow_iec.sandbox")
    tokens = login(sb, client)
    assert sb.otp in caplog.text  # the "SMS"
    assert set(tokens) == {"token_type", "expires_in", "access_token", "scope", "refresh_token", "id_token"}
    assert tokens["expires_in"] == 3600 and tokens["scope"] == SCOPE
    idc = claims(tokens["id_token"])
    assert idc["aud"] == CLIENT_ID and idc["exp"] == int(T0) + 3600 and idc["nonce"] == "abc123"
    assert idc["iss"] == f"{sb.okta_url}/oauth2/default"

    # RS256 against /v1/keys, as py-iec-api verifies it.
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = client.get(f"{sb.okta_url}/oauth2/default/v1/keys").json()["keys"][0]
    head, payload, sig = tokens["id_token"].split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "==="))["kid"] == key["kid"]

    def num(s):
        return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")

    public = rsa.RSAPublicNumbers(num(key["e"]), num(key["n"])).public_key()
    public.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), f"{head}.{payload}".encode(),
                  padding.PKCS1v15(), hashes.SHA256())

    r = api(sb, client, tokens, "GET", "customer")
    assert r.status_code == 200 and r.json()["bpNumber"] == sb.bp_number


def test_form_post_page_escapes_dashes(sb, client):
    state_token, verify = start_otp(sb, client)
    session = client.post(verify, json={"stateToken": state_token, "passCode": sb.otp}).json()["sessionToken"]
    page = authorize(sb, client, session, "v" * 43)
    raw = re.search(r'name="code" value="(.+)"/>', page).group(1)
    assert "\\x2D" in raw and "-" not in raw  # Okta-style; the client must decode it
    assert "-" in scrape(page, "code") and scrape(page, "state") == "123abc"
    assert scrape(page, "id_token").count(".") == 2


def test_wrong_otp_then_right_one(sb, client):
    state_token, verify = start_otp(sb, client)
    r = client.post(verify, json={"stateToken": state_token, "passCode": "000000"})
    assert r.status_code == 403
    assert r.json()["errorCode"] == "E0000068" and r.json()["errorSummary"] == "Invalid Passcode/Answer"
    assert r.json()["errorCauses"][0]["errorSummary"].startswith("Your passcode doesn't match")
    r = client.post(verify, json={"stateToken": state_token, "passCode": sb.otp})
    assert r.json()["status"] == "SUCCESS"


def test_expired_state_token_and_sms_resend(sb, client):
    state_token, verify = start_otp(sb, client)
    r = client.post(verify, json={"stateToken": state_token})  # resend inside 30 s
    assert r.status_code == 429 and r.json()["errorCode"] == "E0000109"
    sb.advance(301)
    r = client.post(verify, json={"stateToken": state_token, "passCode": sb.otp})
    assert r.status_code == 401
    assert r.json()["errorCode"] == "E0000011" and r.json()["errorSummary"] == "Invalid token provided"


def test_unknown_user(sb, client):
    r = client.post(f"{sb.okta_url}/api/v1/authn", json={"username": "000000018@iec.co.il"})
    assert r.status_code == 401 and r.json()["errorCode"] == "E0000004"


def test_pkce_is_checked(sb, client):
    state_token, verify = start_otp(sb, client)
    session = client.post(verify, json={"stateToken": state_token, "passCode": sb.otp}).json()["sessionToken"]
    code = scrape(authorize(sb, client, session, "a" * 43), "code")
    form = {"client_id": CLIENT_ID, "grant_type": "authorization_code", "redirect_uri": REDIRECT_URI,
            "code": code, "code_verifier": "b" * 43}
    r = client.post(f"{sb.okta_url}/oauth2/default/v1/token", data=form)
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_grant", "error_description": "PKCE verification failed."}
    # The code was used up by the failed attempt.
    r = client.post(f"{sb.okta_url}/oauth2/default/v1/token", data={**form, "code_verifier": "a" * 43})
    assert r.json()["error"] == "invalid_grant" and "authorization code" in r.json()["error_description"]
    # The sessionToken is one-time too.
    assert scrape(authorize(sb, client, session, "a" * 43), "error") == "login_required"


def test_authorize_requires_challenge(sb, client):
    r = client.get(f"{sb.okta_url}/oauth2/default/v1/authorize", params={
        "client_id": CLIENT_ID, "response_type": "id_token code", "redirect_uri": REDIRECT_URI, "state": "s"})
    assert scrape(r.text, "error") == "invalid_request" and scrape(r.text, "code") is None


def test_refresh_rotates(sb, client):
    tokens = login(sb, client)
    sb.advance(3000)
    r = refresh(sb, client, tokens["refresh_token"])
    assert r.status_code == 200
    new = r.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert claims(new["id_token"])["exp"] == int(T0) + 3000 + 3600
    sb.advance(31)  # past the rotation grace
    r = refresh(sb, client, tokens["refresh_token"])
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant", "error_description": "The refresh token is invalid or expired."}
    assert refresh(sb, client, new["refresh_token"]).status_code == 200


def test_revoked_refresh(sb, client):
    tokens = login(sb, client)
    sb.revoke_refresh_tokens()
    r = refresh(sb, client, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_api_token_rules(sb, client):
    tokens = login(sb, client)
    r = client.get(f"{sb.api_url}/customer", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 401 and r.json()["Error"] == "Unauthorized" and r.json()["Code"] == 401
    assert client.get(f"{sb.api_url}/customer").status_code == 401
    sb.advance(3600)
    r = api(sb, client, tokens, "GET", "customer")
    assert r.status_code == 401 and set(r.json()) == {"Error", "Code", "Rid"}


# -- IEC API ----------------------------------------------------------------------------------


def test_account_customer_contract_devices(sb, client):
    tokens = login(sb, client)
    accounts = api(sb, client, tokens, "GET", "outages/accounts").json()
    assert accounts["reponseDescriptor"]["isSuccess"] is True
    assert accounts["data"][0]["accountNumber"] == sb.bp_number
    assert accounts["data"][0]["governmentNumber"] == sb.id_number

    contracts = api(sb, client, tokens, "GET", f"customer/contract/{sb.bp_number}", params={"count": 1}).json()
    contract = contracts["data"]["contracts"][0]
    assert contract["contractId"] == sb.contract_id and contract["contractId"].startswith("00")
    assert contract["smartMeter"] is True and contract["fromPativteProducer"] is True

    devices = api(sb, client, tokens, "GET", f"Device/{sb.contract_id}").json()
    assert devices == [{"isActive": True, "deviceType": 3, "deviceNumber": sb.meter_serial,
                        "deviceCode": sb.meter_code}]
    device_in = api(sb, client, tokens, "GET", f"DeviceIn/{sb.contract_id}").json()
    assert device_in["devices"][0]["meterKind"] == "דו כיווני"
    # Paths are case-insensitive and a doubled slash is tolerated.
    assert api(sb, client, tokens, "GET", f"/device/{sb.contract_id}").json() == devices


def test_daily_readings(sb, client):
    tokens = login(sb, client)
    for day, expected_rows in (("2026-02-10", 48), ("2026-02-09", 96), ("2026-02-08", 96)):
        r = reading(sb, client, tokens, day, 1)
        assert r.status_code == 200
        body = r.json()
        assert body["reportStatus"] == 0 and body["contractNumber"] == sb.contract_id
        meter = body["meterList"][0]
        rows = meter["periodConsumptions"]
        assert len(rows) == expected_rows == meter["numberOfPeriodAggregated"]
        assert meter["startDate"] == meter["endDate"] == day
        local_midnight = datetime.fromisoformat(day).replace(tzinfo=TZ).astimezone(UTC)
        assert rows[0]["interval"] == local_midnight.isoformat()  # "2026-02-09T22:00:00+00:00"
        assert set(rows[0]) == {"interval", "consumption", "backStream", "status"}
        assert meter["totalConsumptionForPeriod"] == round(sum(x["consumption"] for x in rows), 3) > 0
        assert meter["totalBackStreamForPeriod"] == round(sum(x["backStream"] for x in rows), 3) > 0
        assert meter["meterKind"] == 2 and meter["meterSerial"] == sb.meter_serial
        assert meter["futureConsumptionInfo"]["currentDate"] == "2026-02-10"
    # Deterministic: the same seed gives the same numbers; another seed does not.
    same = IECSandbox(now=lambda: T0)
    other = IECSandbox(now=lambda: T0, seed=7)
    day = date(2026, 2, 9)
    assert same._visible(day) == sb._visible(day) != other._visible(day)


def test_monthly_and_weekly_readings(sb, client):
    tokens = login(sb, client)
    meter = reading(sb, client, tokens, "2026-02-10", 3).json()["meterList"][0]
    rows = meter["periodConsumptions"]
    assert (meter["startDate"], meter["endDate"]) == ("2026-02-01", "2026-02-28")
    assert len(rows) == 10  # Feb 1..10, today partial
    daily = reading(sb, client, tokens, "2026-02-09", 1).json()["meterList"][0]
    assert rows[8]["consumption"] == daily["totalConsumptionForPeriod"]
    assert meter["totalConsumptionForPeriod"] == pytest.approx(sum(x["consumption"] for x in rows), abs=0.01)
    assert meter["numberOfPeriodAggregated"] == 9 * 96 + 48
    week = reading(sb, client, tokens, "2026-02-10", 2).json()["meterList"][0]
    assert (week["startDate"], week["endDate"]) == ("2026-02-08", "2026-02-14")  # Sunday..Saturday
    assert len(week["periodConsumptions"]) == 3


def test_empty_day_and_dst_day(sb, client):
    tokens = login(sb, client)
    sb.empty_days.add(date(2026, 2, 9))
    meter = reading(sb, client, tokens, "2026-02-09", 1).json()["meterList"][0]
    assert meter["periodConsumptions"] == [] and meter["totalConsumptionForPeriod"] == 0
    assert meter["totalBackStreamForPeriod"] == 0 and meter["numberOfPeriodAggregated"] == 0
    assert reading(sb, client, tokens, "2026-03-01", 1).json()["meterList"][0]["periodConsumptions"] == []
    sb.advance(60 * 86400)  # Israel went to summer time on Friday 2026-03-27
    tokens = login(sb, client)
    assert len(reading(sb, client, tokens, "2026-03-27", 1).json()["meterList"][0]["periodConsumptions"]) == 92


def test_reading_errors(sb, client):
    tokens = login(sb, client)
    r = reading(sb, client, tokens, "2026-02-09", 1, contract="000111222333")
    assert r.status_code == 401 and r.json()["Error"] == "Contract is not associated with you."
    assert r.json()["Code"] == 401 and r.json()["Rid"]
    legacy_body = {"meterSerialNumber": sb.meter_serial, "meterCode": sb.meter_code,
                   "contractNumber": sb.contract_id, "lastInvoiceDate": "2026-01-17", "fromDate": "2026-02-09",
                   "resolution": 1}
    r = api(sb, client, tokens, "POST", f"Consumption/RemoteReadingRange/{sb.contract_id}", json=legacy_body)
    assert r.status_code == 400 and r.json()["Code"] == 400
    for path in ("Device/000111222333", f"ElectricBillsDrawers/ElectricBills/000111222333/{sb.bp_number}",
                 "customer/contract/9999"):
        r = api(sb, client, tokens, "GET", path)
        assert r.status_code == 401 and r.json()["Error"] == "Contract is not associated with you."


def test_legacy_format():
    with IECSandbox(now=lambda: T0, reading_format="legacy") as sb, httpx.Client(timeout=5) as client:
        tokens = login(sb, client)
        r = api(sb, client, tokens, "POST", f"Consumption/RemoteReadingRange/{sb.contract_id}", json={
            "meterSerialNumber": sb.meter_serial, "meterCode": sb.meter_code, "contractNumber": sb.contract_id,
            "lastInvoiceDate": "2026-01-17", "fromDate": "2026-02-09", "resolution": 1})
        body = r.json()
        assert body["status"] == 0 and len(body["data"]) == 96
        assert body["data"][0]["date"] == "2026-02-09T00:00:00.000000"
        assert body["totalConsumptionForPeriod"] == round(sum(x["value"] for x in body["data"]), 3)


def test_bills_and_invoices(sb, client):
    tokens = login(sb, client)
    bills = api(sb, client, tokens, "GET",
                f"ElectricBillsDrawers/ElectricBills/{sb.contract_id}/{sb.bp_number}").json()["data"]
    latest = bills["invoices"][0]
    assert (latest["fromDate"], latest["toDate"]) == ("2025-11-17T00:00:00", "2026-01-16T00:00:00")
    assert latest["daysPeriod"] == 61 and re.fullmatch(r"\d\d/\d\d/\d{4}", latest["lastDate"])
    assert bills["totalAmountToPay"] == latest["amountToPay"] == latest["amountOrigin"] > 0
    assert bills["totalInvoicesToPay"] == 1 and bills["invoices"][1]["amountPaid"] > 0
    assert latest["contractNumber"] == int(sb.contract_id)
    invoices = api(sb, client, tokens, "GET", f"billingCollection/invoices/{sb.contract_id}/{sb.bp_number}",
                   params={"onlyOpen": "true"}).json()["data"]
    assert len(invoices["invoices"]) == 1 and invoices["invoices"][0]["consumption"] > 0
    assert invoices["invoices"][0]["meterReadings"][0]["serialNumber"].endswith(sb.meter_serial)


def test_requests_are_recorded_without_secrets(sb, client):
    tokens = login(sb, client)
    reading(sb, client, tokens, "2026-02-09", 1)
    paths = [(r.method, r.path) for r in sb.requests]
    assert ("POST", "/okta/api/v1/authn") in paths and ("GET", "/okta/oauth2/default/v1/authorize") in paths
    verify = [r for r in sb.requests if r.path.endswith("/verify")][-1]
    assert verify.body == {"stateToken": "***", "passCode": "***"} and verify.status == 200
    token_req = next(r for r in sb.requests if r.path.endswith("/v1/token"))
    assert token_req.body["code"] == token_req.body["code_verifier"] == "***"
    assert token_req.body["grant_type"] == "authorization_code"
    assert next(r for r in sb.requests if r.path.endswith("/authorize")).query["sessionToken"] == "***"
    last = sb.requests[-1]
    assert last.body["fromDate"] == "2026-02-09" and last.status == 200
    dump = repr(sb.requests)
    for secret in (tokens["id_token"], tokens["refresh_token"], f"'{sb.otp}'"):
        assert secret not in dump


def test_main_runs_in_foreground():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from meterflow_iec.sandbox import main; "
            "sys.exit(main(['--port', '0', '--otp', '654321']))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(SRC)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        okta_url = re.search(r"okta_url=(\S+)", line).group(1)
        r = httpx.get(f"{okta_url}/oauth2/default/.well-known/openid-configuration", timeout=5)
        assert r.json()["issuer"] == f"{okta_url}/oauth2/default"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert "654321" in proc.stderr.read()  # the login banner names the OTP
