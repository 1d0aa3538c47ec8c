"""Everything ``flows/smt.yaml`` needs to run against the SMT sandbox in a test.

:func:`smt_env` builds, in a temporary directory:

* an :class:`~meterflow.sandbox.smt.SmtSandbox` (Gen 1: mutual TLS + Basic) with a
  "current" and a "previous" client certificate, both registered (unregister one to
  simulate SMT not having installed it yet);
* a credential store holding the sandbox's user, password, ESIID and meter number (and
  the Home Assistant token), pointed at by ``METERFLOW_CREDENTIALS`` /
  ``METERFLOW_KEY_FILE``: these two go into ``os.environ`` (through ``monkeypatch``)
  because the credential store and the ``${creds:}`` scheme read the process
  environment, not the harness's ``env``;
* the ``${ENV}`` settings of the flow (``SMT_URL``, ``SMT_CA``, ``SMT_CERT`` ..., MQTT,
  SMTP, Home Assistant), handed to :class:`~meterflow.testing.Harness` as ``env``.

:meth:`SmtEnv.harness` loads the flow text under a file name inside the temporary
directory, so the flow's relative ``state/...`` paths (context store, spools) land there,
and points the sandbox's clock at the harness's virtual clock (rate limits, read dates).
"""

from __future__ import annotations

import email
import email.policy
import time
from dataclasses import dataclass, field
from pathlib import Path

from services import SMTP_PASSWORD, SMTP_USER, HttpRecorder, Mosquitto, Smtp, Subscriber, until

from meterflow.credentials import CredentialStore
from meterflow.sandbox.smt import SmtSandbox, fingerprint
from meterflow.testing import Harness

FLOW = Path(__file__).resolve().parent.parent / "flows" / "smt.yaml"
# Distinct values: the credential store registers them as secrets for the whole test
# session (meterflow.redact), so they must not be text other tests look for.
USER, PASSWORD = "smt-e2e-user", "smt-e2e-password"
ESIID, METER = "10443720000000777", "E2E-METER-7"
HA_TOKEN = "ha-e2e-long-lived-token"
TOPICS = ("smt/reading", "smt/correlationid", "smt/alert")


def start_of_minute_54() -> float:
    """Minute 54 of the current hour (real time, so the sandbox's freshly issued
    certificates are valid at virtual time): the :55 schedule fires 60 s after start."""
    now = time.time()
    return now - now % 3600 + 54 * 60


def cert_fp(path: str) -> str:
    from cryptography import x509

    return fingerprint(x509.load_pem_x509_certificate(Path(path).read_bytes()))


@dataclass
class SmtEnv:
    tmp: Path
    sandbox: SmtSandbox
    mosquitto: Mosquitto
    smtp: Smtp
    support: str  # this test's recipient address, to tell its e-mails from other tests'
    env: dict[str, str]
    current_cert: str
    current_key: str
    previous_cert: str
    previous_key: str
    ha: HttpRecorder | None = None
    harnesses: list[Harness] = field(default_factory=list)

    @property
    def current_fp(self) -> str:
        return cert_fp(self.current_cert)

    @property
    def previous_fp(self) -> str:
        return cert_fp(self.previous_cert)

    def harness(self, start_time: float | None = None, **env: str) -> Harness:
        """A harness on flows/smt.yaml; the sandbox follows its virtual clock."""
        h = Harness(text=FLOW.read_text(), file=str(self.tmp / "smt.yaml"), env={**self.env, **env},
                    start_time=start_of_minute_54() if start_time is None else start_time)
        self.sandbox.clock = h.clock.time
        self.harnesses.append(h)
        return h

    # ---- what the outside world saw -------------------------------------------------------
    def requests(self, route: str | None = None) -> list:
        """Sandbox requests, optionally only ``/odr/`` ("odr") or ``/odrstatus/`` ("odrstatus")."""
        reqs = list(self.sandbox.requests)
        if route is None:
            return reqs
        return [r for r in reqs if r.path.rstrip("/").rsplit("/", 1)[-1] == route]

    def emails(self) -> list[email.message.EmailMessage]:
        with self.smtp.lock:
            raws = [raw for _, rcpts, raw, _ in self.smtp.messages if self.support in rcpts]
        return [email.message_from_bytes(raw, policy=email.policy.default) for raw in raws]

    def ha_calls(self) -> list[str]:
        """``domain/service entity_id`` of every Home Assistant service call."""
        import json

        out = []
        for r in self.ha.requests if self.ha else []:
            body = json.loads(r.body or b"{}")
            out.append(f"{r.path.removeprefix('/api/services/')} {body.get('entity_id')}")
        return out

    def subscribe(self) -> Subscriber:
        return Subscriber(self.mosquitto.port, "smt/#")

    async def wait_for(self, sub: Subscriber, topic: str, n: int = 1, timeout: float = 10.0) -> list[bytes]:
        def got() -> list[bytes]:
            with sub.lock:
                return [p for t, p, _ in sub.got if t == topic]

        await until(lambda: len(got()) >= n, timeout, f"{n} message(s) on {topic}")
        return got()

    async def retained(self, topic: str) -> list[tuple[bytes, bool]]:
        """What a new subscriber gets on ``topic`` at once: the retained message, if any."""
        import asyncio

        late = Subscriber(self.mosquitto.port, topic)
        try:
            await asyncio.sleep(0.3)  # real time: the broker sends retained messages right after SUBACK
            with late.lock:
                return [(p, r) for _, p, r in late.got]
        finally:
            late.close()


def clear_retained(port: int) -> None:
    """Delete what earlier tests left retained on the session's broker (an empty retained message)."""
    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic in TOPICS:
            c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def smt_env(tmp_path: Path, monkeypatch, mosquitto: Mosquitto, smtp: Smtp, *, ha: HttpRecorder | None = None,
            support: str = "support@smt.test", **sandbox_kw) -> SmtEnv:
    """Build the sandbox, certificates, credential store and flow settings (see module doc).
    The caller stops ``env.sandbox`` (the ``smt`` fixture in the tests does)."""
    store_path, key_path = tmp_path / "creds" / "credentials.json", tmp_path / "creds" / "credentials.key"
    store_path.parent.mkdir()
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(store_path))
    monkeypatch.setenv("METERFLOW_KEY_FILE", str(key_path))
    monkeypatch.delenv("METERFLOW_KEY", raising=False)
    store = CredentialStore(store_path, key_file=key_path)
    for name, value in (("username", USER), ("password", PASSWORD), ("esiid", ESIID), ("meter", METER)):
        store.set("smt", name, value)
    store.set("ha", "token", HA_TOKEN)

    sandbox_kw.setdefault("mode", "cert")
    sandbox = SmtSandbox(state_dir=tmp_path / "sandbox", users={USER: PASSWORD}, **sandbox_kw)
    current_cert, current_key = sandbox.issue_client_cert("current")
    previous_cert, previous_key = sandbox.issue_client_cert("previous")
    sandbox.start()
    clear_retained(mosquitto.port)

    env = {
        "SMT_URL": sandbox.url,
        "SMT_CA": sandbox.ca_path,
        "SMT_CERT": current_cert,
        "SMT_KEY": current_key,
        "SMT_PREVIOUS_CERT": previous_cert,
        "SMT_PREVIOUS_KEY": previous_key,
        "SMT_USERID": USER,
        "SMT_SUPPORT_EMAIL": support,
        "SMT_FROM_EMAIL": SMTP_USER,
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(mosquitto.port),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.starttls_port),
        "SMTP_SECURITY": "starttls",
        "SMTP_USER": SMTP_USER,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_CA": str(smtp.ca_path),
        "HA_DISABLED": "true",
    }
    if ha is not None:
        env.update(HA_DISABLED="false", HA_URL=ha.url)
    return SmtEnv(tmp_path, sandbox, mosquitto, smtp, support, env, current_cert, current_key,
                  previous_cert, previous_key, ha)
