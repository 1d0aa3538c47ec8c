"""Real services for the I/O tests, started once per test session on free loopback ports.

Loaded as a pytest plugin (``pytest_plugins = ["tests.services"]`` in ``tests/conftest.py``).

* ``mosquitto`` — Debian's ``/usr/sbin/mosquitto`` with a temporary config;
  ``mosquitto_factory(persistent=, users=, tls=)`` starts extra brokers (persistent
  sessions, password logins, a TLS listener), which a test may stop and restart.
* ``certs`` — a trustme CA and a server certificate for localhost / 127.0.0.1.
* ``influxd`` — Debian's ``influxd`` 1.x (its ``/write`` and ``/query`` are real) with
  meta/data/wal in a temporary directory, HTTP and RPC bound to 127.0.0.1, reporting off.
* ``smtp`` — aiosmtpd with trustme certificates, listening twice: implicit TLS and
  STARTTLS (both require a login); every received message is kept.
* ``http_recorder`` — a tiny HTTP server that records requests and answers from a script
  (for the InfluxDB v2 API and Home Assistant's REST API).

A missing binary or library skips the tests that need it, with the package to install.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SMTP_USER, SMTP_PASSWORD = "meter@example.test", "s3cret-smtp-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


async def until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond()`` on the real clock (for tests that talk to real servers)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _binary(*candidates: str) -> str | None:
    for c in candidates:
        if os.path.isabs(c) and os.access(c, os.X_OK):
            return c
        found = shutil.which(c)
        if found:
            return found
    return None


class _Process:
    """A server process that can be stopped and started again on the same port."""

    def __init__(self, argv: list[str], port: int, log: Path):
        self.argv, self.port, self.logfile = argv, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.stop()
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._ready()
        except RuntimeError as e:
            raise RuntimeError(f"{self.argv[0]} did not start: {e}\n{self.logfile.read_text()[-2000:]}") from None

    def _ready(self) -> None:
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# ---- mosquitto -----------------------------------------------------------------------------------
class Mosquitto(_Process):
    """``persistent``: sessions and queued messages survive a restart (saved at SIGTERM)."""

    def __init__(self, binary: str, directory: Path, persistent: bool = False, users: dict | None = None,
                 tls: Certs | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.host, port = "127.0.0.1", free_port()
        conf = directory / "mosquitto.conf"
        # "user": run as whoever runs the tests (as root, mosquitto would switch to the
        # 'mosquitto' user, which cannot write the persistence file in our temp directory).
        text = (f"per_listener_settings false\nlistener {port} 127.0.0.1\nlog_dest stderr\nuser {getpass.getuser()}\n"
                "log_type error\nlog_type warning\nmax_queued_messages 0\n")
        if tls is not None:
            text += f"certfile {tls.cert_path}\nkeyfile {tls.key_path}\n"
        if users:
            pw = directory / "passwords"
            pw.write_text("")
            tool = _binary("/usr/bin/mosquitto_passwd", "mosquitto_passwd")
            for user, password in users.items():
                subprocess.run([tool, "-b", str(pw), user, password], check=True, capture_output=True)
            text += f"allow_anonymous false\npassword_file {pw}\n"
        else:
            text += "allow_anonymous true\n"
        if persistent:
            text += f"persistence true\npersistence_location {directory}/\nautosave_interval 0\n"
        else:
            text += "persistence false\n"
        conf.write_text(text)
        super().__init__([binary, "-c", str(conf)], port, directory / "mosquitto.log")


@pytest.fixture(scope="session")
def mosquitto_factory(tmp_path_factory):
    binary = _binary("/usr/sbin/mosquitto", "mosquitto")
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    started: list[Mosquitto] = []

    def make(persistent: bool = False, users: dict | None = None, tls: Certs | None = None) -> Mosquitto:
        m = Mosquitto(binary, tmp_path_factory.mktemp("mosquitto"), persistent, users, tls)
        m.start()
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture(scope="session")
def mosquitto(mosquitto_factory) -> Mosquitto:
    return mosquitto_factory()


class Subscriber:
    """A plain paho client on its own loop thread, collecting (topic, payload, retain)."""

    def __init__(self, port: int, topic: str, client_id: str = "", clean: bool = True, qos: int = 1):
        self.got: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        import paho.mqtt.client as paho

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(topic, qos)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _message(self, client, userdata, m):
        with self.lock:
            self.got.append((m.topic, m.payload, bool(m.retain)))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def broker_yaml(port: int, **extra) -> str:
    fields = "".join(f"\n    {k}: {v}" for k, v in extra.items())
    return f"""config:
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: {port}
    reconnect_min: 1s
    reconnect_max: 1s{fields}
"""


# ---- influxd 1.x ------------------------------------------------------------------------------
class Influxd(_Process):
    def __init__(self, binary: str, directory: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = directory / "influxdb.conf"
        conf.write_text(f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{directory / 'meta'}"
  logging-enabled = false
[data]
  dir = "{directory / 'data'}"
  wal-dir = "{directory / 'wal'}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
""")
        super().__init__([binary, "run", "-config", str(conf)], self.port, directory / "influxd.log")

    def _ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=0.5).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("influxd did not answer /ping")

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> dict:
        import httpx

        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        r = httpx.post(f"{self.url}/query", params=params, timeout=5)
        r.raise_for_status()
        return r.json()

    def rows(self, q: str, db: str) -> list[dict]:
        """Rows of the first series of a query, as dicts."""
        res = self.query(q, db)["results"][0]
        out = []
        for series in res.get("series", []):
            for values in series["values"]:
                out.append(dict(zip(series["columns"], values, strict=True)))
        return out

    def create_db(self, name: str) -> str:
        self.query(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def influxd(tmp_path_factory) -> Influxd:
    binary = _binary("/usr/bin/influxd", "influxd")
    if binary is None:
        pytest.skip("influxd is not installed (apt-get install influxdb)")
    pytest.importorskip("httpx")
    server = Influxd(binary, tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


# ---- certificates (trustme) -----------------------------------------------------------------------
@dataclass
class Certs:
    ca_path: Path  # the test CA, for a tls-profile's ``ca``
    cert_path: Path  # server certificate for localhost / 127.0.0.1
    key_path: Path
    server_context: object  # ssl.SSLContext for servers


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    trustme = pytest.importorskip("trustme", reason="pip install trustme")
    import ssl

    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    c = Certs(d / "ca.pem", d / "server.pem", d / "server.key", ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    ca.cert_pem.write_to_path(str(c.ca_path))
    cert.cert_chain_pems[0].write_to_path(str(c.cert_path))
    cert.private_key_pem.write_to_path(str(c.key_path))
    cert.configure_cert(c.server_context)
    return c


# ---- SMTP (aiosmtpd + trustme) -------------------------------------------------------------------
@dataclass
class Smtp:
    implicit_port: int
    starttls_port: int
    ca_path: Path
    cert_path: Path
    messages: list = field(default_factory=list)  # (mail_from, rcpt_tos, raw bytes, port)
    replies: list = field(default_factory=list)  # scripted replies to DATA, e.g. "451 4.3.0 try later"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, n: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"expected {n} message(s), got {len(self.messages)}")


@pytest.fixture(scope="session")
def smtp(certs):
    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="pip install aiosmtpd")
    from aiosmtpd.smtp import AuthResult, LoginPassword

    server_ctx = certs.server_context
    state = Smtp(free_port(), free_port(), certs.ca_path, certs.cert_path)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            with state.lock:
                if state.replies:
                    return state.replies.pop(0)
                state.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                       server._smtp_port))
            return "250 2.0.0 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SMTP_USER.encode(), SMTP_PASSWORD.encode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd replies 535 itself

    class Controller(controller_mod.Controller):
        def __init__(self, port, **kw):
            super().__init__(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                             auth_required=True, **kw)
            self._port = port

        def factory(self):
            import warnings

            with warnings.catch_warnings():  # "AUTH without requiring TLS": the implicit-TLS port is TLS
                warnings.simplefilter("ignore")
                smtpd = super().factory()
            smtpd._smtp_port = self._port
            return smtpd

    # implicit TLS: the connection is encrypted from the start, which aiosmtpd's AUTH check
    # (it only knows STARTTLS) cannot see, hence auth_require_tls=False there.
    implicit = Controller(state.implicit_port, ssl_context=server_ctx, auth_require_tls=False)
    starttls = Controller(state.starttls_port, tls_context=server_ctx, require_starttls=True)
    implicit.start()
    starttls.start()
    yield state
    implicit.stop()
    starttls.stop()


# ---- a scriptable HTTP server -------------------------------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes


class HttpRecorder:
    """Records every request; answers with ``responses`` in order (then the ``default``)."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.responses: list[tuple[int, dict, bytes]] = []
        self.default: tuple[int, dict, bytes] = (204, {}, b"")
        recorder = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                recorder.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
                status, headers, data = recorder.responses.pop(0) if recorder.responses else recorder.default
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def reply(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
        if isinstance(body, dict | list):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        self.responses.append((status, headers or {}, body))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_recorder():
    rec = HttpRecorder()
    yield rec
    rec.close()
