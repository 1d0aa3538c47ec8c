"""tls-request and tls-profile against real TLS servers with real certificates.

Two servers: a small local HTTPS server (TLS 1.3, client certificate REQUIRED, signed by a
trustme CA), and the SMT sandbox (TLS 1.2, pinned client certificates, faults on demand).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from meterflow import credentials
from meterflow.plugins import Registry, make_manager
from meterflow.sandbox.smt import SmtSandbox
from meterflow.testing import FlowLoadError, Harness

# ----------------------------------------------------------------------------- a mutual-TLS server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            # Lingering close, as nginx does: under TLS 1.3 the client has already sent its
            # request when our alert goes out; closing with that request unread would send
            # a TCP RST, which can destroy the alert before the client reads it.
            raw = socket.socket(fileno=self.request.detach())
            try:
                raw.shutdown(socket.SHUT_WR)
                raw.settimeout(1)
                while raw.recv(4096):
                    pass
            except OSError:
                pass
            finally:
                raw.close()
            raise
        super().setup()

    def _cn(self) -> str | None:
        cert = self.request.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    def _reply(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": body.decode("utf-8", "replace"), "cn": self._cn(), "peer": self.client_address}
        self.server.requests.append(rec)
        if self.path.startswith("/redirect"):
            self._reply(302, b"", extra={"Location": "/json?from=redirect"})
        elif self.path.startswith("/json"):
            self._reply(200, json.dumps({"ok": True, "cn": rec["cn"]}).encode())
        elif self.path.startswith("/echo"):
            self._reply(200, json.dumps(rec, default=str).encode())
        elif self.path.startswith("/loop"):
            self._reply(302, b"", extra={"Location": "/loop"})
        elif self.path.startswith("/badgzip"):
            self._reply(200, b"this is not gzip", extra={"Content-Encoding": "gzip"})
        elif self.path.startswith("/bytes"):
            self._reply(200, bytes(range(256)), "application/octet-stream")
        else:
            self._reply(404, b'{"error":"not found"}')

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class MtlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, server_cert: trustme.LeafCert, client_ca: trustme.CA, max_version=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_cert.configure_cert(ctx)
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        if max_version:
            ctx.maximum_version = max_version
        # Handshake in the handler thread, not in accept(): a failed one must not stop the server.
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.requests: list[dict] = []
        self.url = f"https://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):  # handshake failures are expected here
        pass

    def __enter__(self):
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA for the server, a client CA the server trusts, and a stranger CA it does not."""
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    server_cert = server_ca.issue_cert("127.0.0.1", "localhost")
    server_ca.cert_pem.write_to_path(str(d / "server-ca.pem"))
    files = {"dir": d, "server_ca": str(d / "server-ca.pem"), "server_cert": server_cert,
             "client_ca": client_ca}
    for name, ca in (("good", client_ca), ("good2", client_ca), ("stranger", stranger)):
        leaf = ca.issue_cert(f"{name}@example.org", common_name=name)
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(d / f"{name}-key.pem"))
        files[name] = (str(d / f"{name}.pem"), str(d / f"{name}-key.pem"))
    return files


@pytest.fixture
def server(pki):
    with MtlsServer(pki["server_cert"], pki["client_ca"]) as srv:
        yield srv


@pytest.fixture
def smt(tmp_path):
    with SmtSandbox(state_dir=tmp_path / "smt", mode="cert") as sandbox:
        yield sandbox


pytestmark = pytest.mark.usefixtures("private_store")  # tests/conftest.py: never ~/.config


def registry() -> Registry:
    pm = make_manager(load_entry_points=False)
    if not pm.is_registered(credentials):
        pm.register(credentials, name="meterflow.credentials")
    return Registry(pm)


def flow(profile: str, nodes: str) -> str:
    return f"meterflow: 1\nconfig:\n{profile}\nnodes:\n{nodes}\n"


def profile_yaml(cert: str | None, key: str | None, ca: str, extra: str = "") -> str:
    lines = ["  - id: prof", "    type: tls-profile", f"    ca: {ca}"]
    if cert:
        lines.append(f"    cert: {cert}")
    if key:
        lines.append(f"    key: {key}")
    return "\n".join(lines) + ("\n" + extra if extra else "")


def catches(request_id: str = "req") -> str:
    return f"""
  - id: tls_catch
    type: catch
    scope: [{request_id}]
    kinds: [tls]
    wires: [tls_out]
  - id: proto
    type: catch-protocol-error
    scope: [{request_id}]
    wires: [proto_out]
  - id: other_catch
    type: catch
    scope: [{request_id}]
    kinds: [connect, timeout, http, parse, config]
    wires: [other_out]
  - {{id: tls_out, type: junction}}
  - {{id: proto_out, type: junction}}
  - {{id: other_out, type: junction}}
  - {{id: out, type: junction}}"""


def request_yaml(url: str, extra: str = "", tls: bool = True) -> str:
    return f"""
  - id: req
    type: tls-request
    url: "{url}"
{"    tls: prof" if tls else ""}
{extra}
    wires: [out]"""


# ----------------------------------------------------------------------------- success


async def test_success_with_client_cert_and_connection_reuse(server, pki):
    cert, key = pki["good"]
    text = flow(profile_yaml(cert, key, pki["server_ca"]), request_yaml(server.url + "/json", "    ret: obj") + catches())
    async with Harness(text=text) as h:
        await h.send("req", {"payload": None, "topic": "t"})
        await h.send("req", {"payload": None})
        out = h.messages("out")
        assert [m["statusCode"] for m in out] == [200, 200]
        assert out[0]["payload"] == {"ok": True, "cn": "good"}
        assert out[0]["topic"] == "t"
        assert out[0]["responseUrl"] == server.url + "/json"
        assert out[0]["headers"]["content-type"] == "application/json"
        assert out[0]["headers"]["set-cookie"] == ["a=1", "b=2"]
        assert h.messages("tls_out") == [] and h.messages("other_out") == []
    # Both requests went over one pooled connection.
    assert len({r["peer"] for r in server.requests}) == 1


async def test_request_headers_body_modes_and_no_header_leak(server, pki):
    cert, key = pki["good"]
    req = request_yaml(server.url + "/echo/{{{topic}}}", """    method: use
    ret: obj
    request_headers: {X-Static: one, X-Topic: "t={{topic}}"}""")
    async with Harness(text=flow(profile_yaml(cert, key, pki["server_ca"]), req + catches())) as h:
        # A message that already went through a request carries the response's headers:
        # they must not be sent again (the SMT "header leak").
        leaked = {"content-length": "999", "date": "yesterday", "x-leak": "1"}
        await h.send("req", {"method": "post", "topic": "a", "payload": {"x": 1, "name": "é"}, "headers": leaked,
                             "request_headers": {"X-Static": None, "X-Extra": "two"}})
        await h.send("req", {"method": "PUT", "topic": "b", "payload": "plain text"})
        await h.send("req", {"method": "POST", "topic": "c", "payload": {"a": "1 2", "b": ["x", "y"]},
                             "request_headers": {"Content-Type": "application/x-www-form-urlencoded"}})
        await h.send("req", {"method": "GET", "topic": "d", "payload": {"ignored": True}})
        await h.send("req", {"method": "POST", "topic": "e", "payload": b"\x00\x01raw"})
    a, b, c, d, e = server.requests
    assert a["method"] == "POST" and a["path"] == "/echo/a"
    assert json.loads(a["body"]) == {"x": 1, "name": "é"}
    assert a["headers"]["content-type"] == "application/json"
    assert a["headers"]["x-extra"] == "two" and a["headers"]["x-topic"] == "t=a"
    assert "x-static" not in a["headers"]  # removed by msg.request_headers: null
    assert "x-leak" not in a["headers"] and a["headers"].get("date") is None
    assert a["headers"]["content-length"] == str(len(a["body"].encode()))
    assert b["method"] == "PUT" and b["body"] == "plain text" and b["headers"]["x-static"] == "one"
    assert c["body"] == "a=1+2&b=x&b=y"
    assert d["method"] == "GET" and d["body"] == ""
    assert e["body"] == "\x00\x01raw"


async def test_redirects_msg_url_and_binary(server, pki):
    cert, key = pki["good"]
    req = """
  - id: req
    type: tls-request
    tls: prof
    ret: obj
    wires: [out]
  - id: bin
    type: tls-request
    tls: prof
    url: "{{{base}}}/bytes"
    ret: bin
    wires: [out]
  - {id: out, type: junction}"""
    async with Harness(text=flow(profile_yaml(cert, key, pki["server_ca"]), req)) as h:
        await h.send("req", {"url": server.url + "/redirect"})
        await h.send("bin", {"base": server.url})
        redirected, binary = h.messages("out")
    assert redirected["payload"] == {"ok": True, "cn": "good"}
    assert redirected["responseUrl"] == server.url + "/json?from=redirect"
    assert redirected["redirectList"] == [{"location": server.url + "/json?from=redirect"}]
    assert binary["payload"] == bytes(range(256))


async def test_no_cookies_carried_and_no_content_type_invented(server, pki):
    # The server sets cookies on every response; a flow that wants one sends it itself.
    cert, key = pki["good"]
    req = request_yaml(server.url + "/echo", "    method: POST")
    async with Harness(text=flow(profile_yaml(cert, key, pki["server_ca"]), req + catches())) as h:
        await h.send("req", {"payload": b"raw"})
        await h.send("req", {"payload": "text"})
        assert [m["headers"]["set-cookie"] for m in h.messages("out")] == [["a=1", "b=2"]] * 2
    for r in server.requests:
        assert "cookie" not in r["headers"]
        assert "content-type" not in r["headers"]  # bytes and strings go as they are (body: auto)
    assert [r["body"] for r in server.requests] == ["raw", "text"]


async def test_redirect_loop_is_http_and_bad_encoding_is_parse(server, pki):
    cert, key = pki["good"]
    text = flow(profile_yaml(cert, key, pki["server_ca"]), request_yaml(server.url + "/{{{topic}}}") + catches())
    async with Harness(text=text) as h:
        await h.send("req", {"topic": "loop"})
        await h.send("req", {"topic": "badgzip"})
        loop, badgzip = (m["error"] for m in h.messages("other_out"))
        assert h.messages("tls_out") == [] and h.messages("out") == []
    assert loop["kind"] == "http" and "too many redirects" in loop["message"]
    assert badgzip["kind"] == "parse" and "cannot decode" in badgzip["message"]
    assert len(server.requests) == 1 + 20 + 1  # the first, 20 redirects followed, then the gzip request


# ----------------------------------------------------------------------------- TLS failures and catch by kind


async def test_rejected_client_cert_tls13_is_kind_tls_and_reaches_tls_catch(server, pki):
    cert, key = pki["stranger"]  # issued by a CA the server does not trust
    text = flow(profile_yaml(cert, key, pki["server_ca"]), request_yaml(server.url + "/json") + catches())
    async with Harness(text=text) as h:
        await h.send("req", {"payload": {"keep": "me"}})
        [caught] = h.messages("tls_out")
        assert h.messages("proto_out")[0]["error"]["kind"] == "tls"
        assert h.messages("other_out") == [] and h.messages("out") == []
    err = caught["error"]
    assert err["kind"] == "tls" and err["source"]["id"] == "req"
    assert "UNKNOWN_CA" in err["reason"]
    assert "rejected the client certificate" in err["message"]
    assert caught["payload"] == {"keep": "me"}  # the request can be sent again as it was


async def test_no_client_cert_and_untrusted_server_are_tls(server, pki):
    cert, key = pki["good"]
    profiles = (profile_yaml(None, None, pki["server_ca"])  # no client certificate
                + "\n  - {id: sys, type: tls-profile}"  # system trust store: the test CA is unknown
                + f"\n  - {{id: insecure, type: tls-profile, verify: false, cert: {cert}, key: {key}}}")
    text = flow(profiles, request_yaml(server.url + "/json") + catches() + f"""
  - id: req2
    type: tls-request
    url: {server.url}/json
    tls: sys
    wires: [out]
  - id: req3
    type: tls-request
    url: {server.url}/json
    tls: insecure
    ret: obj
    wires: [out]
  - id: c2
    type: catch
    scope: [req2]
    kinds: [tls]
    wires: [tls_out]""")
    async with Harness(text=text) as h:
        await h.send("req", {})
        await h.send("req2", {})
        await h.send("req3", {})
        no_cert, untrusted = (m["error"] for m in h.messages("tls_out"))
        assert h.messages("out")[0]["payload"]["cn"] == "good"  # verify: false still sends the certificate
    assert no_cert["reason"].endswith("CERTIFICATE_REQUIRED") and "requires a client certificate" in no_cert["message"]
    assert untrusted["reason"] == "CERTIFICATE_VERIFY_FAILED" and "not trusted" in untrusted["message"]


async def test_connection_refused_is_connect_and_does_not_reach_tls_catch(pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    text = flow(profile_yaml(*pki["good"], pki["server_ca"]), request_yaml(f"https://127.0.0.1:{port}/x") + catches())
    async with Harness(text=text) as h:
        await h.send("req", {"payload": 1})
        assert h.messages("tls_out") == [] and h.messages("proto_out") == []
        [caught] = h.messages("other_out")
    assert caught["error"]["kind"] == "connect"
    assert f"cannot connect to https://127.0.0.1:{port}/x" in caught["error"]["message"]


# ----------------------------------------------------------------------------- the SMT sandbox (TLS 1.2)


def smt_flow(smt, cert, key, req_extra: str = "", url_path: str = "/odr/") -> str:
    prof = profile_yaml(cert, key, smt.ca_path, "    server_name: services.smartmetertexas.net")
    req = request_yaml(smt.url + url_path, """    method: POST
    ret: obj
    auth: {type: basic, user: smt-user, password: "${creds:smt.password}"}
""" + req_extra)
    return flow(prof, req + catches())


ODR = {"trans_id": "1", "requesterType": "RES", "requestorID": "smt-user", "ESIID": "10443720000000001",
       "deliveryMode": "api", "SMTTermsandConditions": "Y"}


@pytest.fixture
def smt_password(tmp_path):
    store = credentials.CredentialStore()
    store.set("smt", "password", "smt-password")
    return "smt-password"


async def test_smt_registered_cert_unregistered_cert_and_catch(smt, smt_password):
    good = smt.issue_client_cert("current")
    old = smt.issue_client_cert("renewed", register=False)
    async with Harness(text=smt_flow(smt, *good), registry=registry()) as h:
        await h.send("req", {"payload": dict(ODR)})
        [ok] = h.messages("out")
    assert ok["statusCode"] == 200 and ok["payload"]["statusCode"] == "0"
    assert smt.requests[-1].headers["authorization"] == "Basic ***"  # accepted; the sandbox masks the rest
    async with Harness(text=smt_flow(smt, *old), registry=registry()) as h:
        await h.send("req", {"payload": dict(ODR)})
        [caught] = h.messages("tls_out")
        assert h.messages("other_out") == []
    # TLS 1.2: the bad_certificate alert arrives during the handshake (aiohttp's ClientConnectorSSLError).
    assert caught["error"]["reason"] == "SSLV3_ALERT_BAD_CERTIFICATE"


async def test_min_version_above_the_server_is_tls(smt, smt_password):
    cert, key = smt.issue_client_cert("current")
    text = smt_flow(smt, cert, key).replace("    server_name:", '    min_version: "1.3"\n    server_name:')
    async with Harness(text=text, registry=registry()) as h:
        await h.send("req", {"payload": dict(ODR)})  # the sandbox speaks TLS 1.2 at most, like SMT
        [caught] = h.messages("tls_out")
    assert "no TLS version both sides accept" in caught["error"]["message"]
    assert len(smt.requests) == 0


async def test_smt_faults_reset_slow_500_garbled(smt, smt_password):
    cert, key = smt.issue_client_cert("current")
    text = smt_flow(smt, cert, key, "    timeout: 300ms") + """
  - id: strict
    type: tls-request
    url: "SMT_URL/odr/"
    tls: prof
    method: POST
    ret: obj
    http_errors: true
    auth: {type: basic, user: smt-user, password: "${creds:smt.password}"}
  - id: c3
    type: catch
    scope: [strict]
    wires: [other_out]""".replace("SMT_URL", smt.url)
    async with Harness(text=text, registry=registry()) as h:
        smt.fail_next("reset")
        await h.send("req", {"payload": dict(ODR)})
        smt.fail_next("slow", delay=2)
        await h.send("req", {"payload": dict(ODR)})
        smt.fail_next("http500")
        await h.send("req", {"payload": dict(ODR)})
        smt.fail_next("garbled")
        await h.send("req", {"payload": dict(ODR)})
        smt.fail_next("http500")
        await h.send("strict", {"payload": dict(ODR)})
        assert h.messages("tls_out") == []  # a reset is no certificate problem (the 2023 flow's false alarm)
        reset, slow, garbled, http = (m["error"] for m in h.messages("other_out"))
        [server_error] = h.messages("out")
    assert reset["kind"] == "connect"
    assert slow["kind"] == "timeout" and "within 0.3s" in slow["message"]
    assert server_error["statusCode"] == 500 and server_error["payload"] == {"error": "Something went wrong. Please try again later."}
    assert garbled["kind"] == "parse" and garbled["status"] == 200 and "not valid JSON" in garbled["message"]
    assert http["kind"] == "http" and http["status"] == 500 and http["message"].startswith("HTTP 500")
    caught_garbled = h.messages("other_out")[2]
    assert caught_garbled["statusCode"] == 200 and caught_garbled["payload"].startswith('{"trans_id"')


async def test_retry_with_backoff_on_the_virtual_clock(smt, smt_password):
    cert, key = smt.issue_client_cert("current")
    text = smt_flow(smt, cert, key, "    retry: {attempts: 3, backoff: 10s, max_backoff: 15s, jitter: 0}")
    async with Harness(text=text, registry=registry()) as h:
        smt.fail_next("reset", count=2)
        h.inject("req", {"payload": dict(ODR)})
        await h.settle()
        assert len(smt.requests) == 1 and h.messages("out") == []
        await h.advance(9.9)
        assert len(smt.requests) == 1
        await h.advance(0.1)  # first wait: 10 s
        assert len(smt.requests) == 2
        await h.advance(14.9)  # second wait: 20 s capped to 15 s
        assert len(smt.requests) == 2
        await h.advance(0.1)
        assert len(smt.requests) == 3
        [ok] = h.messages("out")
        assert ok["statusCode"] == 200 and h.messages("other_out") == []
        # Exhausted: the last error is reported.
        smt.fail_next("reset", count=3)
        h.inject("req", {"payload": dict(ODR)})
        await h.advance(60)
        assert len(smt.requests) == 6
        assert [m["error"]["kind"] for m in h.messages("other_out")] == ["connect"]


async def test_certificate_replaced_on_disk_is_used_without_restart(smt, smt_password, tmp_path):
    first = smt.issue_client_cert("first")
    second = smt.issue_client_cert("second")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = str(live / "fullchain.pem"), str(live / "privkey.pem")
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    async with Harness(text=smt_flow(smt, cert, key), registry=registry()) as h:
        await h.send("req", {"payload": dict(ODR)})
        fp_first = smt.requests[-1].client_cert
        # certbot-style renewal: new files moved into place.
        for src, dst in ((second[0], cert), (second[1], key)):
            shutil.copy(src, dst + ".new")
            os.replace(dst + ".new", dst)
        await h.send("req", {"payload": dict(ODR)})
        fp_second = smt.requests[-1].client_cert
        # A half-done renewal (new certificate, old key) keeps the last good pair in use.
        shutil.copy(first[0], cert)
        await h.send("req", {"payload": dict(ODR)})
        assert [m["statusCode"] for m in h.messages("out")] == [200, 200, 200]
    assert fp_first and fp_second and fp_first != fp_second
    assert smt.requests[-1].client_cert == fp_second


# ----------------------------------------------------------------------------- bad local files


def _load_problems(text: str) -> str:
    with pytest.raises(FlowLoadError) as e:
        Harness(text=text, registry=registry()).load()
    return str(e.value)


def test_bad_certificate_files_are_clear_check_errors(pki, tmp_path):
    cert, key = pki["good"]
    other_key = pki["good2"][1]
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    nodes = "  - {id: r, type: tls-request, url: https://x/, tls: prof}"
    missing = _load_problems(flow(profile_yaml(str(tmp_path / "nope.pem"), key, pki["server_ca"]), nodes))
    assert f"cannot read certificate file {tmp_path / 'nope.pem'}: No such file or directory" in missing
    assert "test-flow.yaml:" in missing  # file:line:col
    assert f"{garbled} is not a PEM certificate file" in _load_problems(
        flow(profile_yaml(str(garbled), key, pki["server_ca"]), nodes))
    assert f"the key in {other_key} does not match the certificate in {cert}" in _load_problems(
        flow(profile_yaml(cert, other_key, pki["server_ca"]), nodes))
    assert f"{garbled} is not a PEM CA bundle" in _load_problems(flow(profile_yaml(cert, key, str(garbled)), nodes))


def test_encrypted_key_needs_the_right_passphrase(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization

    cert, key = pki["good"]
    pk = serialization.load_pem_private_key(open(key, "rb").read(), None)
    enc = tmp_path / "enc-key.pem"
    enc.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"correct horse")))
    nodes = "  - {id: r, type: tls-request, url: https://x/, tls: prof}"
    assert f"the key in {enc} is encrypted: set key_passphrase" in _load_problems(
        flow(profile_yaml(cert, str(enc), pki["server_ca"]), nodes))
    wrong = _load_problems(flow(profile_yaml(cert, str(enc), pki["server_ca"], "    key_passphrase: wrong-one"), nodes))
    assert f"cannot decrypt the key in {enc}: wrong key_passphrase" in wrong
    Harness(text=flow(profile_yaml(cert, str(enc), pki["server_ca"], "    key_passphrase: correct horse"), nodes)).load()


async def test_unreadable_certificate_at_start_names_the_file(pki, tmp_path):
    cert = tmp_path / "cert.pem"
    shutil.copy(pki["good"][0], cert)
    text = flow(profile_yaml(str(cert), pki["good"][1], pki["server_ca"]),
                "  - {id: r, type: tls-request, url: https://x/, tls: prof}")
    h = Harness(text=text)
    h.load()  # valid when checked ...
    cert.unlink()  # ... gone when started
    from meterflow.errors import ConfigError

    with pytest.raises(ConfigError, match=f"cannot read certificate file {cert}"):
        await h.start()


# ----------------------------------------------------------------------------- secrets stay out of output


async def test_secrets_never_in_logs_or_errors(smt, smt_password, caplog, pki):
    caplog.set_level(logging.DEBUG)
    cert, key = smt.issue_client_cert("current")
    stranger = pki["stranger"]
    text = (smt_flow(smt, cert, key, "    http_errors: true") + f"""
  - id: creds
    type: credentials
    credential: smt
    fields: {{password: password, auth.pw: password}}
    wires: [req, bad]
  - id: bad
    type: tls-request
    url: {smt.url}/odr/
    method: POST
    tls: bad_prof
    auth: {{type: basic, user: smt-user, password: "${{creds:smt.password}}"}}
  - id: c4
    type: catch
    scope: [bad]
    wires: [tls_out]
  - id: dbg
    type: debug
    property: msg
""").replace("  - {id: out, type: junction}", "  - {id: out, type: junction, wires: [dbg]}")
    text = text.replace("nodes:\n", f"""  - id: bad_prof
    type: tls-profile
    cert: {stranger[0]}
    key: {stranger[1]}
    ca: {smt.ca_path}
    server_name: services.smartmetertexas.net
nodes:
""")
    h = Harness(text=text, registry=registry())
    h.engine.trace = True
    async with h:
        await h.send("creds", {"payload": dict(ODR)})
        smt.fail_next("http500")
        await h.send("creds", {"payload": dict(ODR)})
        caught = h.messages("tls_out") + h.messages("other_out")
        assert {m["error"]["kind"] for m in caught} >= {"tls", "http"}
        assert h.messages("out")[0]["password"] == smt_password  # the flow itself can use it
    for m in caught:
        assert smt_password not in json.dumps(m["error"])
    assert smt_password not in caplog.text
    import base64

    assert base64.b64encode(f"smt-user:{smt_password}".encode()).decode() not in caplog.text
    assert "-> tls-request" in caplog.text  # the trace was on
    assert h.debug[0][1]["password"] == "***" and '"password": "***"' in caplog.text  # shown, masked
