"""The SMT sandbox: a real local HTTPS server, exercised with httpx over loopback."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
import trustme

from meterflow.sandbox import smt
from meterflow.sandbox.smt import SmtSandbox

USER, PASSWORD = "smt-user", "smt-password"
ESIID = "10443720000000001"
T0 = 1_700_000_000.0  # 2023-11-14 16:13:20 America/Chicago


def odr_body(esiid: str = ESIID, **extra) -> dict:
    # The body the 2023 flow builds ("Create Read Request JSON" + "Create Auth and Payload").
    return {"trans_id": "123", "requesterType": "RES", "requestorID": USER, "reportFormat": "JSON",
            "ESIID": esiid, "MeterNumber": "123456789", "deliveryMode": "api",
            "SMTTermsandConditions": "Y", **extra}


def status_body(cid: str) -> dict:
    return {"trans_id": "123", "requestorID": USER, "correlationId": cid, "SMTTermsandConditions": "Y"}


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ssl_error_in_chain(exc: BaseException) -> ssl.SSLError | None:
    # httpx -> httpcore keeps the ssl.SSLError as __context__, not __cause__.
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem(tmp_path, client_ca):
    """Write a client key + certificate chain PEM issued by ``ca`` (default: client_ca)."""
    def make(name: str, ca: trustme.CA | None = None) -> str:
        path = tmp_path / f"{name}.pem"
        (ca or client_ca).issue_cert(f"{name}.example").private_key_and_cert_chain_pem.write_to_path(path)
        return str(path)
    return make


@pytest.fixture
def sandbox(tmp_path):
    started = []

    def make(**kwargs) -> SmtSandbox:
        kwargs.setdefault("clock", FakeClock())
        sb = SmtSandbox(state_dir=tmp_path / f"state{len(started)}", **kwargs).start()
        started.append(sb)
        return sb
    yield make
    for sb in started:
        sb.stop()


def client(sb: SmtSandbox, cert: str | None = None, **kwargs) -> httpx.Client:
    # httpx 0.28 deprecates cert=/verify=<path>; an SSLContext is its documented replacement.
    ctx = ssl.create_default_context(cafile=sb.ca_path)
    if cert:
        ctx.load_cert_chain(cert)
    kwargs.setdefault("timeout", 3)
    return httpx.Client(base_url=sb.url, verify=ctx, **kwargs)


def gen1(sb: SmtSandbox, cert: str, **kwargs) -> httpx.Client:
    return client(sb, cert, auth=(USER, PASSWORD), **kwargs)


def get_token(c: httpx.Client) -> str:
    return c.post("/v2/token", json={"username": USER, "password": PASSWORD}).json()["accessToken"]


# ----------------------------------------------------------------------------- Gen 1


def test_gen1_odr_pending_then_reading(sandbox, pem):
    sb = sandbox(mode="cert", pending_polls=2)
    cert = pem("current")
    fp = sb.register_client_cert(cert)
    with gen1(sb, cert) as c:
        r = c.post("/odr/", json=odr_body())
        assert r.status_code == 200
        assert r.json() == {"trans_id": "123", "correlationId": "100001", "statusCode": "0",
                            "statusReason": "Request submitted successfully for further processing"}
        cid = r.json()["correlationId"]
        polls = [c.post("/odrstatus/", json=status_body(cid)) for _ in range(3)]

    assert [p.json()["statusCode"] for p in polls] == ["PEN", "PEN", "0"]
    # SMT's own JSON style: escaped slashes, scientific-notation numbers (meter-apis.md A.3).
    assert '"registeredRead":0E+0,"readDate":"11\\/14\\/2023 16:13:20"' in polls[0].text
    assert '"registeredRead":2.3459133E+4' in polls[2].text
    done = polls[2].json()
    assert done["statusReason"] == "ODR retreived successfully"
    assert done["odrRead"] == {"registeredRead": 23459.133, "readDate": "11/14/2023 16:13:20"}

    assert [(r.method, r.path) for r in sb.requests] == [("POST", "/odr/")] + [("POST", "/odrstatus/")] * 3
    first = sb.requests[0]
    assert first.headers["authorization"] == "Basic ***"
    assert first.json == odr_body()
    assert first.client_cert == fp and first.status == 200
    assert "server" not in first.headers  # nothing leaked from a previous response


def test_readings_are_deterministic_per_esiid(sandbox, pem):
    sb = sandbox(mode="cert", pending_polls=0, rate_limit_per_hour=5)
    cert = pem("c")
    sb.register_client_cert(cert)
    with gen1(sb, cert) as c:
        reads = []
        for _ in range(2):
            cid = c.post("/odr/", json=odr_body()).json()["correlationId"]
            reads.append(c.post("/odrstatus/", json=status_body(cid)).json()["odrRead"]["registeredRead"])
    assert reads == [23459.133, 23460.383]


def test_unregistered_client_cert_fails_the_tls_handshake(sandbox, pem):
    sb = sandbox(mode="cert")
    sb.register_client_cert(pem("registered"))
    with gen1(sb, pem("stranger")) as c, pytest.raises(httpx.ConnectError) as info:
        c.post("/odr/", json=odr_body())
    err = ssl_error_in_chain(info.value)
    assert err is not None and err.reason == "SSLV3_ALERT_BAD_CERTIFICATE"
    assert sb.requests == []  # rejected before HTTP


def test_no_client_cert_fails_the_tls_handshake(sandbox):
    sb = sandbox(mode="cert")
    with client(sb) as c, pytest.raises(httpx.ConnectError) as info:
        c.post("/odr/", json=odr_body(), auth=(USER, PASSWORD))
    assert ssl_error_in_chain(info.value).reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


def test_fullchain_registration_and_unregister(sandbox, pem, client_ca):
    # A Let's-Encrypt-style fullchain.pem: leaf + intermediate. Only the leaf is pinned.
    sb = sandbox(mode="cert")
    cert = pem("leaf", client_ca.create_child_ca())
    fp = sb.register_client_cert(cert)
    assert sb.registered_fingerprints == {fp}
    with gen1(sb, cert) as c:
        assert c.post("/odr/", json=odr_body()).status_code == 200
        # Unregistering (colon-separated upper-case fingerprint is fine) also drops the pooled
        # connection, so the next request does a new handshake and is refused.
        sb.unregister_client_cert(":".join(re.findall("..", fp.upper())))
        assert sb.registered_fingerprints == set()
        with pytest.raises(httpx.TransportError):
            c.post("/odr/", json=odr_body())
    with gen1(sb, cert) as c, pytest.raises(httpx.ConnectError):
        c.post("/odr/", json=odr_body())


def test_registered_ca_accepts_its_certificates(sandbox, pem):
    sb = sandbox(mode="cert")
    other = trustme.CA()
    ca_pem = sb.state_dir / "other-ca.pem"
    other.cert_pem.write_to_path(ca_pem)
    sb.register_client_ca(ca_pem)
    with gen1(sb, pem("any", other)) as c:
        assert c.post("/odr/", json=odr_body()).status_code == 200


def test_issue_client_cert(sandbox):
    sb = sandbox(mode="cert")
    cert, key = sb.issue_client_cert("node-red")
    ctx = ssl.create_default_context(cafile=sb.ca_path)
    ctx.load_cert_chain(cert, key)
    with httpx.Client(base_url=sb.url, verify=ctx, auth=(USER, PASSWORD)) as c:
        assert c.post("/odr/", json=odr_body()).status_code == 200


@pytest.mark.parametrize("auth, status, body", [
    (None, 403, {"error": "Basic authentication header is missing."}),
    ((USER, "wrong"), 401, {"error": "Incorrect username or password."}),
    (("", PASSWORD), 400, {"error": "Please provide username."}),
    ((USER, ""), 400, {"error": "Please provide password."}),
])
def test_basic_auth_errors(sandbox, pem, auth, status, body):
    sb = sandbox(mode="cert")
    cert = pem("c")
    sb.register_client_cert(cert)
    with client(sb, cert, auth=auth) as c:
        r = c.post("/odr/", json=odr_body())
    assert (r.status_code, r.json()) == (status, body)
    assert sb.odrs == {}


def test_odr_field_validation(sandbox, pem):
    sb = sandbox(mode="cert")
    cert = pem("c")
    sb.register_client_cert(cert)
    body = odr_body()
    del body["ESIID"]
    with gen1(sb, cert) as c:
        r = c.post("/odr/", json=body)
        assert r.json() == {"errorCode": "1", "errorMessage": "Missing required field(s): ESIID"}
        r = c.post("/odr/", json=odr_body(SMTTermsandConditions="N"))
        assert r.json()["errorCode"] == "1"
        # The 2023 flow's body without MeterNumber, Accept typo and no content type: still fine.
        no_meter = {k: v for k, v in odr_body().items() if k != "MeterNumber"}
        r = c.post("/odr/", content=json.dumps(no_meter), headers={"accept": "applictaion/json"})
        assert r.json()["statusReason"] == smt.REASON_SUBMITTED
        r = c.post("/odrstatus/", json=status_body("999"))
        assert r.json() == {"trans_id": "123", "correlationId": "999", "statusCode": "1",
                            "statusReason": "Invalid correlationId"}
        assert c.post("/odr/", content=b'{"trans_id":"12').status_code == 400


def test_rate_limit_two_per_esiid_per_hour(sandbox, pem):
    clock = FakeClock()
    sb = sandbox(mode="cert", clock=clock)
    cert = pem("c")
    sb.register_client_cert(cert)
    with gen1(sb, cert) as c:
        assert [c.post("/odr/", json=odr_body()).json()["statusCode"] for _ in range(2)] == ["0", "0"]
        refused = c.post("/odr/", json=odr_body()).json()
        assert refused == {"trans_id": "123", "statusCode": "1", "statusReason": smt.REASON_RATE_LIMIT}
        assert c.post("/odr/", json=odr_body("10443720000000002")).json()["statusCode"] == "0"
        clock.t += 3600
        assert c.post("/odr/", json=odr_body()).json()["statusReason"] == smt.REASON_SUBMITTED
    assert len(sb.odrs) == 4


def test_odr_failure_status_1(sandbox, pem):
    sb = sandbox(mode="cert", pending_polls=1)
    cert = pem("c")
    sb.register_client_cert(cert)
    sb.fail_next_odr()
    with gen1(sb, cert) as c:
        cid = c.post("/odr/", json=odr_body()).json()["correlationId"]
        codes = [c.post("/odrstatus/", json=status_body(cid)).json() for _ in range(2)]
        assert [x["statusCode"] for x in codes] == ["PEN", "1"]
        assert codes[1]["statusReason"] == "ODR request failed"
        cid = c.post("/odr/", json=odr_body()).json()["correlationId"]  # the next one works
        c.post("/odrstatus/", json=status_body(cid))
        assert c.post("/odrstatus/", json=status_body(cid)).json()["statusCode"] == "0"


# ----------------------------------------------------------------------------- faults


@pytest.fixture
def gen1_pair(sandbox, pem):
    sb = sandbox(mode="cert", pending_polls=0)
    cert = pem("c")
    sb.register_client_cert(cert)
    with gen1(sb, cert, timeout=0.5) as c:
        yield sb, c


def test_fault_http500(gen1_pair):
    sb, c = gen1_pair
    sb.fail_next("http500")
    r = c.post("/odr/", json=odr_body())
    assert (r.status_code, r.json()) == (500, {"error": "Something went wrong. Please try again later."})
    assert sb.odrs == {} and sb.requests[-1].fault == "http500"
    assert c.post("/odr/", json=odr_body()).status_code == 200  # one-shot


def test_fault_garbled(gen1_pair):
    sb, c = gen1_pair
    sb.fail_next("garbled", path="odrstatus")
    cid = c.post("/odr/", json=odr_body()).json()["correlationId"]  # not affected
    r = c.post("/odrstatus/", json=status_body(cid))
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_fault_smt_error_on_status(gen1_pair):
    sb, c = gen1_pair
    sb.fail_next("smt_error", path="/odrstatus/")
    cid = c.post("/odr/", json=odr_body()).json()["correlationId"]
    r = c.post("/odrstatus/", json=status_body(cid))
    assert r.json() == {"errorCode": "1", "errorMessage": "No data received from the respective TDSP"}
    assert c.post("/odrstatus/", json=status_body(cid)).json()["statusCode"] == "0"


def test_fault_reset(gen1_pair):
    sb, c = gen1_pair
    sb.fail_next("reset")
    with pytest.raises(httpx.TransportError):
        c.post("/odr/", json=odr_body())
    assert sb.requests[-1].status is None and sb.requests[-1].fault == "reset"
    assert c.post("/odr/", json=odr_body()).status_code == 200


def test_fault_slow(gen1_pair):
    sb, c = gen1_pair
    sb.fail_next("slow", delay=1.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        c.post("/odr/", json=odr_body(), timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert len(sb.odrs) == 1  # slow still processes the request, like a real slow server
    with pytest.raises(ValueError):
        sb.fail_next("teapot")


def test_stale_content_length_times_out_with_408(sandbox):
    # The header leak (smt-original-behaviour.md): a Content-Length copied from the previous
    # response is longer than the body, so the server waits for bytes that never come.
    sb = sandbox(mode="token", request_timeout=0.3)
    ctx = ssl.create_default_context(cafile=sb.ca_path)
    body = json.dumps({"username": USER, "password": PASSWORD}).encode()
    with socket.create_connection(("127.0.0.1", sb.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"POST /v2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500\r\n\r\n" + body)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert sb.requests[-1].body_error == "timeout reading body"
    assert PASSWORD not in repr(sb.requests)


def test_chunked_framing_both_ways(sandbox):
    sb = sandbox(mode="token", chunked=True)
    with client(sb) as c:
        r = c.post("/v2/token/", content=iter([json.dumps({"username": USER, "password": PASSWORD}).encode()]))
    assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
    assert r.json()["tokenType"] == "Bearer"
    assert sb.requests[0].headers["transfer-encoding"] == "chunked"


# ----------------------------------------------------------------------------- Gen 2


def test_token_flow_and_expiry(sandbox, caplog):
    caplog.set_level("INFO", logger="meterflow.sandbox.smt")
    clock = FakeClock()
    sb = sandbox(mode="token", token_ttl=3600, clock=clock, pending_polls=1)
    with client(sb) as c:
        tok = c.post("/v2/token", json={"username": USER, "password": PASSWORD}).json()
        assert tok["statusCode"] == "200" and tok["tokenType"] == "Bearer" and tok["expiresIn"] == "3600"
        assert (tok["issuedAt"], tok["expiresAt"]) == ("11/14/2023 16:13:20", "11/14/2023 17:13:20")
        bearer = {"Authorization": f"Bearer {tok['accessToken']}"}
        r = c.post("/v2/odr/", json=odr_body(), headers=bearer)
        assert r.json()["statusReason"] == smt.REASON_SUBMITTED
        cid = r.json()["correlationId"]
        assert c.post("/v2/odrstatus/", json=status_body(cid), headers=bearer).json()["statusCode"] == "PEN"
        assert c.post("/v2/odrstatus/", json=status_body(cid), headers=bearer).json()["statusCode"] == "0"

        assert c.post("/odr/", json=odr_body(), auth=(USER, PASSWORD)).status_code == 404  # Gen 1 is gone
        assert c.post("/v2/odr/", json=odr_body()).json()["statusCode"] == "401"
        bad = {"Authorization": "Bearer " + tok["accessToken"][:-2] + "xx"}
        assert c.post("/v2/odr/", json=odr_body(), headers=bad).json()["error"] == "Invalid token"
        clock.t += 3600
        r = c.post("/v2/odrstatus/", json=status_body(cid), headers=bearer)
        assert (r.status_code, r.json()) == (401, {"statusCode": "401", "error": "Token expired"})
        r = c.post("/v2/token/", json={"username": USER, "password": "nope"})
        assert r.status_code == 401

    assert sb.requests[0].json == {"username": USER, "password": "***"}
    assert sb.requests[1].headers["authorization"] == "Bearer ***"
    for secret in (PASSWORD, tok["accessToken"]):
        assert secret not in caplog.text and secret not in repr(sb.requests)


def test_token_status_as_int_and_latency(sandbox):
    sb = sandbox(mode="token", token_status_as_int=True, latency_ms=100)
    with client(sb) as c:
        started = time.monotonic()
        assert c.post("/v2/token", json={"username": USER, "password": PASSWORD}).json()["statusCode"] == 200
        assert time.monotonic() - started >= 0.1


def test_both_mode(sandbox, pem):
    sb = sandbox(mode="both")
    cert = pem("c")
    sb.register_client_cert(cert)
    with client(sb) as c:  # no client certificate: Gen 2 works
        bearer = {"Authorization": f"Bearer {get_token(c)}"}
        assert c.post("/v2/odr/", json=odr_body(), headers=bearer).json()["statusCode"] == "0"
        r = c.post("/odr/", json=odr_body(), auth=(USER, PASSWORD))
        assert (r.status_code, r.json()) == (403, {"error": "Client certificate required."})
    with gen1(sb, cert) as c:
        assert c.post("/odr/", json=odr_body()).json()["statusCode"] == "0"
    with gen1(sb, pem("stranger")) as c, pytest.raises(httpx.ConnectError):
        c.post("/odr/", json=odr_body())


# ----------------------------------------------------------------------------- CLI


def test_main_runs_in_the_foreground(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterflow.sandbox.smt", "--port", "0", "--mode", "token",
         "--state", str(tmp_path), "--user", "alice:s3cret", "--pending-polls", "0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        lines = []
        while url is None:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if m := re.search(r"listening on (https://\S+)", line):
                url = m.group(1)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=ctx, timeout=3) as c:
            r = c.post(url + "/v2/token", json={"username": "alice", "password": "s3cret"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert "s3cret" not in "".join(lines) + rest
    assert r.json()["accessToken"] not in rest
