"""Smart Meter Texas (SMT) sandbox: a local HTTPS mock of SMT's official API.

It serves both API generations described in ``shared/reference/meter-apis.md`` Part A:

* Gen 1 (until Sep 2025): mutual TLS plus HTTP Basic, ``POST /odr/`` and ``POST /odrstatus/``.
* Gen 2: ``POST /v2/token`` gives a JWT, then ``Authorization: Bearer`` on ``/v2/odr/`` and
  ``/v2/odrstatus/``. No client certificate.

Embedding (tests)::

    with SmtSandbox(state_dir=tmp_path, mode="cert") as smt:
        smt.register_client_cert("client.pem")
        httpx.post(smt.url + "/odr/", ...)       # trust smt.ca_path
        assert len(smt.requests) == 1

Foreground: ``python -m meterflow.sandbox.smt --port 8443`` (see :func:`main`).

Design notes:

* One thread per connection; TLS runs over ``ssl.MemoryBIO`` instead of ``SSLSocket`` so the
  sandbox sees the raw bytes it sends. That is how it answers an unregistered client
  certificate with the ``bad_certificate`` alert real OpenSSL-based servers send (A.2),
  where Python's ``ssl`` alone would say ``unknown_ca``.
* The server speaks TLS 1.2 at most, like SMT's interface guide (A.1). It also keeps the
  handshake alert in plaintext, which the rewrite above depends on.
* The registered set is "pinned" client certificates (trusted as-is, via OpenSSL's partial
  chain flag) plus whole client CAs. Changing it builds a fresh ``SSLContext``; new
  connections use the new one, and sessions cached under the old one cannot resume.
* Times in bodies (``readDate``, ``issuedAt``) are America/Chicago, from the injectable clock
  ``now()``; rate limits and token expiry use the same clock.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import hashlib
import hmac
import http
import ipaddress
import itertools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from email.utils import formatdate
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

# --- SMT's strings, verbatim from meter-apis.md (A.3-A.5). "retreived" is SMT's spelling. ---
REASON_SUBMITTED = "Request submitted successfully for further processing"
REASON_PENDING = "Request Submitted by API"
REASON_DONE = "ODR retreived successfully"
REASON_FAILED = "ODR request failed"  # assumed (A.3): the real text is not public
REASON_BAD_CORRELATION = "Invalid correlationId"  # assumed (A.3)
REASON_RATE_LIMIT = (
    "You have reached the limit of two On Demand Read request for this ESIID per hour, "
    "you may try again after one hour"
)
ERR_BASIC_MISSING = {"error": "Basic authentication header is missing."}
ERR_BAD_LOGIN = {"error": "Incorrect username or password."}
ERR_NO_USER = {"error": "Please provide username."}
ERR_NO_PASSWORD = {"error": "Please provide password."}
ERR_SERVER = {"error": "Something went wrong. Please try again later."}
ERR_TDSP = {"errorCode": "1", "errorMessage": "No data received from the respective TDSP"}

SERVER_HEADER = "SMT-Sandbox/meterflow"
SMT_HOSTS = ("services.smartmetertexas.net", "uatservices.smartmetertexas.net")
DEFAULT_USERS = {"smt-user": "smt-password"}
FAULT_KINDS = ("http500", "garbled", "reset", "slow", "smt_error")
ODR_REQUIRED = ("requesterType", "requestorID", "ESIID", "deliveryMode", "SMTTermsandConditions")
STATUS_REQUIRED = ("requestorID", "correlationId", "SMTTermsandConditions")
CHICAGO = ZoneInfo("America/Chicago")

_TLS_ALERT = 21
_ALERT_BAD_CERTIFICATE = 42
_ALERT_UNKNOWN_CA = 48
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


# ----------------------------------------------------------------------------- data


@dataclass
class RecordedRequest:
    """One HTTP request as the sandbox received it. Secrets are redacted."""

    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # lower-case names; Authorization keeps only its scheme
    raw_headers: list[tuple[str, str]]  # names as sent, in order (redacted the same way)
    json: Any  # parsed body, "password" values replaced by "***"; None if absent/invalid
    body_error: str | None  # why the body could not be used, else None
    client_cert: str | None  # SHA-256 fingerprint (hex) of the verified client certificate
    at: float  # sandbox clock
    status: int | None = None  # HTTP status sent back; None if no response (reset, timeout)
    fault: str | None = None  # injected fault kind, if any


@dataclass
class Odr:
    """An on-demand read the sandbox accepted."""

    correlation_id: str
    esiid: str
    meter_number: str | None
    user: str
    submitted_at: float
    reading: float  # kWh register value it will report
    outcome: str = "0"  # final statusCode: "0" success, "1" failure
    polls: int = 0
    read_at: float | None = None


@dataclass
class _Fault:
    kind: str
    path: str | None
    delay: float


class _Request:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method, self.target, self.version, self.raw_headers = method, target, version, headers
        self.headers = {}
        for name, value in headers:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        self.route = target.split("?", 1)[0].rstrip("/") or "/"
        self.body = b""


# ----------------------------------------------------------------------------- certificates


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meterflow SMT sandbox CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(ca_cert_path: Path, ca_key_path: Path, cn: str, sans: list[x509.GeneralName],
           eku: x509.ObjectIdentifier, cert_path: Path, key_path: Path) -> None:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_certs(pem: str | os.PathLike | bytes) -> list[x509.Certificate]:
    """Certificates in a PEM file (path) or PEM bytes; key blocks are ignored."""
    data = pem if isinstance(pem, bytes) else Path(pem).read_bytes()
    return x509.load_pem_x509_certificates(data)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as lower-case hex without separators."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _norm_fp(fp: str) -> str:
    return fp.replace(":", "").strip().lower()


# ----------------------------------------------------------------------------- TLS over memory BIO


class _TLSConnection:
    """Server-side TLS over a blocking socket, through ``ssl.MemoryBIO``.

    The point of not using ``SSLSocket``: when the handshake fails we get to look at
    (and fix up) the alert before it goes on the wire.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext):
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_side=True)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLError:
                # OpenSSL reports "issuer not in the trust store" as unknown_ca (48). SMT, and
                # any OpenSSL server that rejects a certificate it was not given, is expected to
                # send bad_certificate (42) (meter-apis.md A.2). Under TLS 1.2 the alert is still
                # plaintext at this point, so change that one byte. Best effort: ignore errors.
                try:
                    self.sock.sendall(_rewrite_alert(self._out.read()))
                except OSError:
                    pass
                raise

    def peer_fingerprint(self) -> str | None:
        der = self.tls.getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest() if der else None

    def recv(self) -> bytes:
        """Some decrypted bytes, or b"" at end of stream."""
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()


def _rewrite_alert(data: bytes) -> bytes:
    out = bytearray(data)
    i = 0
    while i + 5 <= len(out):
        rtype, length = out[i], struct.unpack(">H", out[i + 3:i + 5])[0]
        if rtype == _TLS_ALERT and length == 2 and i + 7 <= len(out) and out[i + 6] == _ALERT_UNKNOWN_CA:
            out[i + 6] = _ALERT_BAD_CERTIFICATE
        i += 5 + length
    return bytes(out)


class _Reader:
    """Buffered reads on top of a :class:`_TLSConnection`."""

    def __init__(self, conn: _TLSConnection):
        self.conn, self.buf = conn, b""

    def _more(self) -> None:
        data = self.conn.recv()
        if not data:
            raise EOFError
        self.buf += data

    def until(self, delim: bytes, limit: int) -> bytes:
        while (end := self.buf.find(delim)) < 0:
            if len(self.buf) > limit:
                raise ValueError("header too large")
            self._more()
        data, self.buf = self.buf[:end], self.buf[end + len(delim):]
        return data

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


# ----------------------------------------------------------------------------- the sandbox


class SmtSandbox:
    """A local HTTPS server that behaves like SMT's official API. See the module docstring.

    ``mode``: ``"cert"`` Gen 1 only, client certificate required at the TLS layer;
    ``"token"`` Gen 2 only, no client certificate asked for; ``"both"``: both generations on
    one port, the client certificate is optional at the TLS layer (a presented but
    unregistered one still fails the handshake) and the Gen 1 endpoints answer 403 without one.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "both",
        state_dir: str | os.PathLike | None = None,
        users: dict[str, str] | None = None,
        pending_polls: int = 2,
        latency_ms: float = 0,
        token_ttl: float = 3600,
        token_status_as_int: bool = False,
        rate_limit_per_hour: int = 2,
        rate_limit_per_day: int = 24,
        clock: Callable[[], float] = time.time,
        server_cert: str | os.PathLike | None = None,
        server_key: str | os.PathLike | None = None,
        server_ca: str | os.PathLike | None = None,
        start_read: float = 23459.133,
        read_step: float = 1.25,
        chunked: bool = False,
        smt_json: bool = True,
        check_requestor: bool = False,
        request_timeout: float = 10.0,
    ):
        if mode not in ("cert", "token", "both"):
            raise ValueError(f"mode must be cert, token or both, not {mode!r}")
        self.host, self._port, self.mode = host, port, mode
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.pending_polls = pending_polls
        self.latency_ms = latency_ms
        self.token_ttl = token_ttl
        self.token_status_as_int = token_status_as_int  # A.5: "200" vs 200 is ambiguous
        self.rate_limit_per_hour = rate_limit_per_hour
        self.rate_limit_per_day = rate_limit_per_day
        self.clock = clock
        self.start_read, self.read_step = start_read, read_step
        self.chunked = chunked  # response framing; Content-Length by default (see header leak)
        self.smt_json = smt_json  # SMT's "\/" escapes and 2.3459133E+4 numbers on odrstatus
        self.check_requestor = check_requestor  # requestorID must equal the authenticated user
        self.request_timeout = request_timeout

        self.requests: list[RecordedRequest] = []
        self.odrs: dict[str, Odr] = {}
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._odr_failures = 0
        self._accepted: dict[str, list[float]] = {}  # ESIID -> times of accepted ODRs
        self._reads_per_esiid: dict[str, int] = {}
        self._correlation = itertools.count(100001)
        self._jti = itertools.count(1)
        self._token_secret = secrets.token_bytes(32)
        self._pinned: dict[str, str] = {}  # fingerprint -> PEM of a registered client cert
        self._cas: dict[str, str] = {}  # fingerprint -> PEM of a registered client CA
        self._conns: dict[socket.socket, str | None] = {}  # open connection -> client cert fp
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []  # connection threads

        self._tmp = None
        if state_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="smt-sandbox-")
            state_dir = self._tmp
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ca_cert = self.state_dir / "ca.pem"
        self._ca_key = self.state_dir / "ca-key.pem"
        if server_cert is not None:
            if server_key is None:
                raise ValueError("server_cert needs server_key")
            self._server_cert, self._server_key = Path(server_cert), Path(server_key)
            self.ca_path = str(server_ca or server_cert)
        else:
            self._make_server_cert()
            self.ca_path = str(self._ca_cert)
        self._ctx = self._build_context()

    # -- lifecycle

    @property
    def port(self) -> int:
        """The listening port (the real one after start(), also with port=0)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def start(self) -> SmtSandbox:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.listen(64)
        self._port = sock.getsockname()[1]  # the real port when 0 was asked for; kept for restarts
        sock.setblocking(False)
        self._listener = sock
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="smt-sandbox-accept", daemon=True)
        self._accept_thread.start()
        log.info("SMT sandbox listening on %s (mode %s)", self.url, self.mode)
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; idempotent."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2)  # no new connections after this
            self._accept_thread = None
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
            self._threads.clear()
        for conn in conns:
            _shutdown(conn)  # wakes threads blocked in recv(); sleeps wake on _stopping
        for t in threads:
            t.join(timeout=2)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> SmtSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        """The sandbox clock (epoch seconds). Replace ``self.clock`` to move time in tests."""
        return self.clock()

    # -- registered client certificates

    def register_client_cert(self, pem: str | os.PathLike | bytes) -> str:
        """Accept exactly this client certificate (the first one in the PEM; a fullchain.pem
        works). Returns its SHA-256 fingerprint."""
        cert = _load_certs(pem)[0]
        fp = fingerprint(cert)
        with self._lock:
            self._pinned[fp] = cert.public_bytes(serialization.Encoding.PEM).decode()
            self._reload()
        return fp

    def register_client_ca(self, pem: str | os.PathLike | bytes) -> str:
        """Accept every client certificate issued by this CA. Returns its fingerprint."""
        cert = _load_certs(pem)[0]
        fp = fingerprint(cert)
        with self._lock:
            self._cas[fp] = cert.public_bytes(serialization.Encoding.PEM).decode()
            self._reload()
        return fp

    def unregister_client_cert(self, cert: str | os.PathLike | bytes) -> None:
        """Forget a certificate or CA, given its fingerprint (hex, colons allowed) or its PEM.

        Open connections made with it are closed (for a CA: every connection that presented
        a client certificate), so a pooled keep-alive connection cannot keep using a
        certificate SMT no longer accepts."""
        if isinstance(cert, str) and not os.path.exists(cert):
            fp = _norm_fp(cert)
        else:
            fp = fingerprint(_load_certs(cert)[0])
        with self._lock:
            was_ca = self._cas.pop(fp, None) is not None
            self._pinned.pop(fp, None)
            self._reload()
            stale = [c for c, cfp in self._conns.items() if cfp is not None and (was_ca or cfp == fp)]
        for conn in stale:
            _shutdown(conn)

    @property
    def registered_fingerprints(self) -> set[str]:
        with self._lock:
            return set(self._pinned) | set(self._cas)

    def issue_client_cert(self, name: str = "client", *, register: bool = True) -> tuple[str, str]:
        """Issue a client certificate from the sandbox CA into the state dir (reused if it
        exists). Returns ``(cert_path, key_path)``; registers it unless ``register=False``."""
        if not self._ca_key.exists():
            raise RuntimeError("the sandbox has no CA key (server certificate was given)")
        cert_path, key_path = self.state_dir / f"{name}-cert.pem", self.state_dir / f"{name}-key.pem"
        if not (cert_path.exists() and key_path.exists()):
            _issue(self._ca_cert, self._ca_key, name, [], ExtendedKeyUsageOID.CLIENT_AUTH, cert_path, key_path)
        if register:
            self.register_client_cert(cert_path)
        return str(cert_path), str(key_path)

    # -- faults and outcomes

    def fail_next(self, kind: str, *, path: str | None = None, count: int = 1, delay: float = 2.0) -> None:
        """Make the next ``count`` matching requests fail.

        ``kind``: ``http500`` (SMT's documented 500 body), ``garbled`` (200 with a cut JSON
        body), ``reset`` (TCP reset, no response), ``slow`` (handled normally but answered
        after ``delay`` s), ``smt_error`` (200 with SMT's business error body, which has no
        statusCode). Except for ``slow`` the request is not processed (no state change).
        ``path``: None matches any request; ``"odrstatus"`` (no leading slash) matches that
        endpoint in both generations; ``"/v2/odrstatus/"`` matches only that path.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._faults.extend(_Fault(kind, path, delay) for _ in range(count))

    def fail_next_odr(self, count: int = 1) -> None:
        """The next ``count`` accepted ODRs end with statusCode "1" instead of a reading."""
        with self._lock:
            self._odr_failures += count

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._odr_failures = 0

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            for i, f in enumerate(self._faults):
                if f.path is None:
                    hit = True
                elif f.path.startswith("/"):
                    hit = f.path.rstrip("/") == route
                else:
                    hit = route.rsplit("/", 1)[-1] == f.path.strip("/")
                if hit:
                    return self._faults.pop(i)
        return None

    # -- TLS context

    def _make_server_cert(self) -> None:
        if not (self._ca_cert.exists() and self._ca_key.exists()):
            _make_ca(self._ca_cert, self._ca_key)
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        sans += [x509.DNSName(h) for h in SMT_HOSTS]  # lets a client keep SMT's host name via SNI
        for ip in {"127.0.0.1", "::1", self.host}:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                sans.append(x509.DNSName(ip))
        self._server_cert = self.state_dir / "server.pem"
        self._server_key = self.state_dir / "server-key.pem"
        # Re-issued on every start (cheap); the CA persists, so clients keep trusting ca.pem.
        _issue(self._ca_cert, self._ca_key, "localhost", sans, ExtendedKeyUsageOID.SERVER_AUTH,
               self._server_cert, self._server_key)

    def _build_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        ctx.load_cert_chain(self._server_cert, self._server_key)
        if self.mode == "token":
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ctx.verify_mode = ssl.CERT_REQUIRED if self.mode == "cert" else ssl.CERT_OPTIONAL
        # Partial chain: a pinned leaf in the store is a trust anchor by itself, so exactly
        # that certificate is accepted, not its siblings from the same CA.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        pems = "".join(list(self._pinned.values()) + list(self._cas.values()))
        if pems:
            ctx.load_verify_locations(cadata=pems)
        return ctx

    def _reload(self) -> None:
        self._ctx = self._build_context()

    # -- connections

    def _accept_loop(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        while not self._stopping.is_set():
            if not sel.select(timeout=0.05):
                continue
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, OSError):
                continue
            conn.setblocking(True)
            t = threading.Thread(target=self._serve, args=(conn, addr), name="smt-sandbox-conn", daemon=True)
            with self._lock:
                self._conns[conn] = None
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()
        sel.close()

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        reset = False
        try:
            sock.settimeout(self.request_timeout)
            tls = _TLSConnection(sock, self._ctx)
            try:
                tls.handshake()
            except (ssl.SSLError, OSError) as exc:
                why = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
                log.info("%s TLS handshake failed: %s", peer, why)
                return
            fp = tls.peer_fingerprint()
            with self._lock:
                self._conns[sock] = fp
            reader = _Reader(tls)
            while not self._stopping.is_set():
                keep, reset = self._one_request(tls, reader, fp, peer)
                if not keep:
                    break
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            with self._lock:
                self._conns.pop(sock, None)
            if reset:
                # SO_LINGER 0: close() sends a TCP RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _one_request(self, tls: _TLSConnection, reader: _Reader, fp: str | None, peer: str) -> tuple[bool, bool]:
        """Read and answer one request. Returns (keep the connection, reset it)."""
        try:
            head = reader.until(b"\r\n\r\n", _MAX_HEAD)
        except (EOFError, TimeoutError):
            return False, False
        except ValueError:
            self._respond(tls, None, 431, {"error": "Request header too large"}, close=True)
            return False, False
        try:
            req = _parse_head(head)
        except ValueError as exc:
            log.info("%s bad request: %s", peer, exc)
            self._respond(tls, None, 400, {"error": "Bad request"}, close=True)
            return False, False

        record = RecordedRequest(
            method=req.method, path=req.target, headers=_redact_headers(req.headers),
            raw_headers=[(n, _redact_header(n, v)) for n, v in req.raw_headers],
            json=None, body_error=None, client_cert=fp, at=self.now(),
        )
        with self._lock:
            self.requests.append(record)
        try:
            req.body = _read_body(reader, req.headers)
        except TimeoutError:
            # Typically a stale Content-Length copied from a previous response (header leak).
            record.body_error = "timeout reading body"
            self._log(peer, record)
            self._respond(tls, record, 408, {"error": "Request timeout"}, close=True)
            return False, False
        except (ValueError, EOFError) as exc:
            record.body_error = f"bad body framing: {exc}"
            self._respond(tls, record, 400, {"error": "Bad request"}, close=True)
            self._log(peer, record)
            return False, False
        if req.body:
            try:
                record.json = _redact_json(json.loads(req.body))
            except ValueError:
                record.body_error = "invalid JSON"

        close = req.headers.get("connection", "").lower() == "close" or req.version == "HTTP/1.0"
        fault = self._take_fault(req.route)
        record.fault = fault.kind if fault else None
        self._sleep(self.latency_ms / 1000)

        if fault and fault.kind == "reset":
            self._log(peer, record)
            return False, True
        if fault and fault.kind == "http500":
            status, body = 500, ERR_SERVER
        elif fault and fault.kind == "garbled":
            status, body = 200, b'{"trans_id":"123","correlationId":"1000'  # cut mid-way
        elif fault and fault.kind == "smt_error":
            status, body = 200, ERR_TDSP
        else:
            status, body = self._dispatch(req, fp)
            if fault and fault.kind == "slow":
                self._sleep(fault.delay)
        self._log(peer, record, status)
        self._respond(tls, record, status, body, close=close)
        return not close, False

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)  # wakes up at stop()

    def _log(self, peer: str, rec: RecordedRequest, status: int | None = None) -> None:
        who = f" cert={rec.client_cert[:16]}" if rec.client_cert else ""
        extra = f" fault={rec.fault}" if rec.fault else ""
        extra += f" ({rec.body_error})" if rec.body_error else ""
        log.info("%s%s %s %s -> %s%s", peer, who, rec.method, rec.path, status or "no response", extra)

    def _respond(self, tls: _TLSConnection, record: RecordedRequest | None, status: int,
                 body: dict | bytes, *, close: bool) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        headers = [
            ("Date", formatdate(self.now(), usegmt=True)),
            ("Server", SERVER_HEADER),
            ("Content-Type", "application/json;charset=UTF-8"),
        ]
        if self.chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            payload = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n" if data else b"0\r\n\r\n"
        else:
            headers.append(("Content-Length", str(len(data))))
            payload = data
        headers.append(("Connection", "close" if close else "keep-alive"))
        head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        if record is not None:
            record.status = status
        tls.sendall(head.encode("latin-1") + payload)

    # -- API

    def _dispatch(self, req: _Request, fp: str | None) -> tuple[int, dict | bytes]:
        gen1 = {"/odr": self._odr, "/odrstatus": self._odrstatus}
        gen2 = {"/v2/token": self._token, "/v2/odr": self._odr, "/v2/odrstatus": self._odrstatus}
        routes = {"cert": gen1, "token": gen2, "both": gen1 | gen2}[self.mode]
        handler = routes.get(req.route)
        if handler is None:
            return 404, {"error": "Not Found"}
        if req.method != "POST":
            return 405, {"error": "Method Not Allowed"}
        if req.route == "/v2/token":
            return self._token(req)
        if req.route.startswith("/v2/"):
            user, err = self._bearer_user(req)
        elif fp is None:
            # Only in "both" mode (in "cert" mode the handshake already required a certificate).
            return 403, {"error": "Client certificate required."}
        else:
            user, err = self._basic_user(req)
        if err is not None:
            return err
        try:
            body = json.loads(req.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return 400, {"errorCode": "1", "errorMessage": "Invalid JSON request body"}
        return handler(body, user)

    def _basic_user(self, req: _Request) -> tuple[str, tuple[int, dict] | None]:
        scheme, _, cred = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not cred.strip():
            return "", (403, ERR_BASIC_MISSING)
        try:
            user, _, password = base64.b64decode(cred.strip()).decode("utf-8").partition(":")
        except ValueError:
            return "", (401, ERR_BAD_LOGIN)
        if not user:
            return "", (400, ERR_NO_USER)
        if not password:
            return "", (400, ERR_NO_PASSWORD)
        if not _check_password(self.users, user, password):
            return "", (401, ERR_BAD_LOGIN)
        return user, None

    def _bearer_user(self, req: _Request) -> tuple[str, tuple[int, dict] | None]:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "", (401, {"statusCode": "401", "error": "Bearer token is missing."})
        claims = self._verify_token(token.strip())
        if claims is None:
            return "", (401, {"statusCode": "401", "error": "Invalid token"})
        if self.now() >= claims["exp"]:
            return "", (401, {"statusCode": "401", "error": "Token expired"})
        return claims["sub"], None

    def _token(self, req: _Request) -> tuple[int, dict]:
        try:
            body = json.loads(req.body) if req.body else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return 400, {"statusCode": "400", "error": "Invalid JSON request body"}
        user, password = body.get("username"), body.get("password")
        if user is None and password is None:  # one client sends only a Basic header (A.5)
            scheme, _, cred = req.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "basic":
                try:
                    user, _, password = base64.b64decode(cred.strip()).decode().partition(":")
                except ValueError:
                    pass
        if not user:
            return 400, {"statusCode": "400", **ERR_NO_USER}
        if not password:
            return 400, {"statusCode": "400", **ERR_NO_PASSWORD}
        if not _check_password(self.users, str(user), str(password)):
            return 401, {"statusCode": "401", "error": "invalidCredentials"}  # assumed (A.5)
        now = self.now()
        exp = now + self.token_ttl
        claims = {"sub": user, "iat": int(now), "exp": exp, "jti": next(self._jti)}
        return 200, {
            "statusCode": 200 if self.token_status_as_int else "200",
            "accessToken": self._sign_token(claims),
            "tokenType": "Bearer",
            "expiresIn": str(int(self.token_ttl)),
            "issuedAt": _smt_time(now),
            "expiresAt": _smt_time(exp),
        }

    def _sign_token(self, claims: dict) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims).encode())
        sig = hmac.new(self._token_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(sig)}"

    def _verify_token(self, token: str) -> dict | None:
        try:
            header, payload, sig = token.split(".")
            want = hmac.new(self._token_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(want, _b64url_decode(sig)):
                return None
            claims = json.loads(_b64url_decode(payload))
            return claims if isinstance(claims, dict) and "exp" in claims and "sub" in claims else None
        except ValueError:
            return None

    def _odr(self, body: dict, user: str) -> tuple[int, dict]:
        trans_id = body.get("trans_id", "")
        missing = [k for k in ODR_REQUIRED if body.get(k) in (None, "")]
        if missing:
            return 200, {"errorCode": "1", "errorMessage": f"Missing required field(s): {', '.join(missing)}"}
        if body["SMTTermsandConditions"] != "Y":
            return 200, {"errorCode": "1", "errorMessage": "SMTTermsandConditions must be Y"}
        if self.check_requestor and body["requestorID"] != user:
            return 200, {"errorCode": "1", "errorMessage": "requestorID does not match the credentials"}
        esiid = str(body["ESIID"])
        now = self.now()
        with self._lock:
            recent = [t for t in self._accepted.get(esiid, []) if now - t < 86400]
            self._accepted[esiid] = recent
            in_hour = sum(1 for t in recent if now - t < 3600)
            if in_hour >= self.rate_limit_per_hour or len(recent) >= self.rate_limit_per_day:
                # Assumed (A.3): HTTP 200 with statusCode "1" and the portal's wording.
                return 200, {"trans_id": trans_id, "statusCode": "1", "statusReason": REASON_RATE_LIMIT}
            recent.append(now)
            n = self._reads_per_esiid.get(esiid, 0)
            self._reads_per_esiid[esiid] = n + 1
            outcome = "0"
            if self._odr_failures:
                self._odr_failures -= 1
                outcome = "1"
            odr = Odr(
                correlation_id=str(next(self._correlation)), esiid=esiid,
                meter_number=body.get("MeterNumber"), user=user, submitted_at=now,
                reading=round(self.start_read + self.read_step * n, 3), outcome=outcome,
            )
            self.odrs[odr.correlation_id] = odr
        return 200, {"trans_id": trans_id, "correlationId": odr.correlation_id,
                     "statusCode": "0", "statusReason": REASON_SUBMITTED}

    def _odrstatus(self, body: dict, user: str) -> tuple[int, dict | bytes]:
        trans_id = body.get("trans_id", "")
        missing = [k for k in STATUS_REQUIRED if k != "correlationId" and body.get(k) in (None, "")]
        if missing:
            return 200, {"errorCode": "1", "errorMessage": f"Missing required field(s): {', '.join(missing)}"}
        cid = str(body.get("correlationId") or "")
        with self._lock:
            odr = self.odrs.get(cid)
            if odr is None:
                return 200, {"trans_id": trans_id, "correlationId": cid, "statusCode": "1",
                             "statusReason": REASON_BAD_CORRELATION}
            odr.polls += 1
            if odr.polls <= self.pending_polls and odr.read_at is None:
                code, reason, value, when = "PEN", REASON_PENDING, 0.0, odr.submitted_at
            else:
                if odr.read_at is None:
                    odr.read_at = self.now()
                if odr.outcome == "1":
                    return 200, {"trans_id": trans_id, "correlationId": cid, "statusCode": "1",
                                 "statusReason": REASON_FAILED}
                code, reason, value, when = "0", REASON_DONE, odr.reading, odr.read_at
        resp = {"trans_id": trans_id, "correlationId": cid, "statusCode": code, "statusReason": reason,
                "odrRead": {"registeredRead": value, "readDate": _smt_time(when)}}
        return 200, (_smt_dumps(resp) if self.smt_json else resp)


# ----------------------------------------------------------------------------- helpers


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return _Request(parts[0], parts[1], parts[2], headers)


def _read_body(reader: _Reader, headers: dict[str, str]) -> bytes:
    # RFC 9112: Transfer-Encoding wins over Content-Length when both are present.
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.until(b"\r\n", 1024).split(b";")[0].strip(), 16)
            if size == 0:
                while reader.until(b"\r\n", _MAX_HEAD):  # trailers, up to the empty line
                    pass
                return body
            body += reader.exact(size)
            if len(body) > _MAX_BODY or reader.exact(2) != b"\r\n":
                raise ValueError("bad chunk")
    length = headers.get("content-length")
    if length is None:
        return b""
    n = int(length)  # ValueError on garbage
    if n < 0 or n > _MAX_BODY:
        raise ValueError("bad Content-Length")
    return reader.exact(n)


def _redact_header(name: str, value: str) -> str:
    if name.lower() in ("authorization", "proxy-authorization"):
        scheme = value.split(" ", 1)[0]
        return f"{scheme} ***" if " " in value else "***"
    return value


def _redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: _redact_header(k, v) for k, v in headers.items()}


def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if k.lower() == "password" else _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def _check_password(users: dict[str, str], user: str, password: str) -> bool:
    expected = users.get(user)
    return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _smt_time(epoch: float) -> str:
    """``MM/DD/YYYY HH:MM:SS`` in America/Chicago, as SMT writes readDate (A.3)."""
    return dt.datetime.fromtimestamp(epoch, CHICAGO).strftime("%m/%d/%Y %H:%M:%S")


def _smt_number(value: float) -> str:
    """SMT's JSON numbers: ``0E+0``, ``2.3459133E+4`` (A.3)."""
    return format(Decimal(repr(float(value))).normalize(), "E")


def _smt_dumps(resp: dict) -> bytes:
    """JSON the way SMT writes it: ``\\/``-escaped slashes, scientific-notation registeredRead."""
    resp = copy.deepcopy(resp)
    number = _smt_number(resp["odrRead"]["registeredRead"])
    resp["odrRead"]["registeredRead"] = "@@READ@@"
    text = json.dumps(resp, separators=(",", ":")).replace("/", "\\/")
    return text.replace('"@@READ@@"', number).encode()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meterflow sandbox smt",
        description="Run a local mock of Smart Meter Texas' official API over HTTPS.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 = any free port)")
    p.add_argument("--state", default="smt-sandbox-state", metavar="DIR",
                   help="directory for the CA, server and client certificates (default ./smt-sandbox-state)")
    p.add_argument("--mode", choices=("cert", "token", "both"), default="both",
                   help="cert: Gen 1 mTLS + Basic; token: Gen 2 JWT; both (default)")
    p.add_argument("--latency-ms", type=float, default=0, help="delay before every response")
    p.add_argument("--pending-polls", type=int, default=2, metavar="N",
                   help='odrstatus answers "PEN" N times before the reading (default 2)')
    p.add_argument("--token-ttl", type=float, default=3600, help="Gen 2 token lifetime in seconds")
    p.add_argument("--rate-limit-per-hour", type=int, default=2, help="ODRs per ESIID per hour")
    p.add_argument("--user", action="append", default=[], metavar="USER:PASSWORD",
                   help=f"API credentials (repeatable; default {next(iter(DEFAULT_USERS))}:...)")
    p.add_argument("--register-cert", action="append", default=[], metavar="PEM",
                   help="client certificate to accept (repeatable)")
    p.add_argument("--register-ca", action="append", default=[], metavar="PEM",
                   help="accept every client certificate issued by this CA (repeatable)")
    p.add_argument("--no-client-cert", action="store_true",
                   help="do not issue and register client-cert.pem in the state dir")
    p.add_argument("--cert", help="server certificate (default: issued by a CA in the state dir)")
    p.add_argument("--key", help="server private key, with --cert")
    p.add_argument("--ca", help="CA that clients should trust, with --cert")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox in the foreground until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s smt-sandbox %(message)s")
    users = None
    if args.user:
        users = {}
        for item in args.user:
            name, sep, password = item.partition(":")
            if not sep or not name or not password:
                build_parser().error(f"--user wants USER:PASSWORD, got {name!r}...")
            users[name] = password
    sandbox = SmtSandbox(
        host=args.host, port=args.port, mode=args.mode, state_dir=args.state, users=users,
        pending_polls=args.pending_polls, latency_ms=args.latency_ms, token_ttl=args.token_ttl,
        rate_limit_per_hour=args.rate_limit_per_hour,
        server_cert=args.cert, server_key=args.key, server_ca=args.ca,
    )
    for pem in args.register_cert:
        log.info("registered client certificate %s", sandbox.register_client_cert(pem))
    for pem in args.register_ca:
        log.info("registered client CA %s", sandbox.register_client_ca(pem))
    if args.mode != "token" and not args.no_client_cert and args.cert is None:
        cert, key = sandbox.issue_client_cert("client")
        log.info("client certificate %s, key %s", cert, key)

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sandbox.start()
    log.info("CA to trust: %s", sandbox.ca_path)
    log.info("users: %s", ", ".join(sandbox.users))  # names only, never passwords
    try:
        while not done.wait(0.5):
            pass
    finally:
        sandbox.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
