"""Test environment for ``flows/smt-token.yaml``: a credential store in a temporary
directory, the SMT sandbox in token mode reading the harness's virtual clock, and a
subscriber on a real mosquitto under a topic prefix of its own (so retained readings of one
test never reach another).

    rig = SmtTokenRig(tmp_path, monkeypatch, mosquitto, sandbox={"pending_polls": 2})
    await rig.start()
    await rig.h.advance(60)
    await rig.finish()               # stop the flow, then wait until the broker passed on everything
    assert rig.published("reading") == [b"23459.133"]
"""

from __future__ import annotations

import itertools
import threading
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from services import Subscriber, until

from meterflow.credentials import CredentialStore
from meterflow.sandbox.smt import DEFAULT_USERS, RecordedRequest, SmtSandbox
from meterflow.testing import Harness

FLOW = Path(__file__).resolve().parents[1] / "flows" / "smt-token.yaml"
CHICAGO = ZoneInfo("America/Chicago")
USER, PASSWORD = next(iter(DEFAULT_USERS.items()))
ESIID, METER = "10443720004529871", "123456789LG"
# 30 s before the first scheduled read (10:55:00 America/Chicago).
T0 = datetime(2025, 10, 6, 10, 54, 30, tzinfo=CHICAGO).timestamp()
DELAYS = ("poll-delay", "wait-retry")

_ids = itertools.count(1)


def credential_store(tmp_path: Path, monkeypatch, name: str = "smt", **fields: str) -> CredentialStore:
    """A fresh encrypted store (key file next to it) that the flow finds through the environment."""
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.setenv("METERFLOW_KEY_FILE", str(tmp_path / "credentials.key"))
    monkeypatch.delenv("METERFLOW_KEY", raising=False)
    store = CredentialStore()
    values = {"username": USER, "password": PASSWORD, "esiid": ESIID, "meter": METER, **fields}
    for field, value in values.items():
        store.set(name, field, value)
    return store


def flow_env(sandbox: SmtSandbox, mqtt_port: int, state_dir: Path, prefix: str, **extra: str) -> dict[str, str]:
    """The flow's settings for one meter against the sandbox."""
    return {
        "SMT_URL": sandbox.url,
        "SMT_CA": sandbox.ca_path,
        "SMT_STATE_DIR": str(state_dir),
        "SMT_TOPIC_PREFIX": prefix,
        "MQTT_PORT": str(mqtt_port),
        "HA_DISABLED": "true",
        **extra,
    }


class SmtTokenRig:
    """The flow on a virtual clock, the sandbox on the same clock (plus ``skew`` seconds: SMT's
    clock running ahead), and a subscriber to ``<prefix>/#``."""

    def __init__(self, tmp_path: Path, monkeypatch, mosquitto, *, sandbox: dict | None = None,
                 env: dict | None = None, start: float = T0):
        credential_store(tmp_path, monkeypatch)
        self.tmp, self.mosquitto, self.start_time = tmp_path, mosquitto, start
        self.skew = 0.0
        self.h: Harness | None = None
        self.sb = SmtSandbox(**{"mode": "token", "state_dir": tmp_path / "sandbox", "clock": self.now, **(sandbox or {})})
        self.sb.start()
        self.prefix = f"smt-test-{next(_ids)}-{id(self):x}"
        self.sub = Subscriber(mosquitto.port, f"{self.prefix}/#")
        self.env = flow_env(self.sb, mosquitto.port, tmp_path / "state", self.prefix, **(env or {}))

    def now(self) -> float:
        base = self.h.clock.time() if self.h is not None else self.start_time
        return base + self.skew

    async def start(self, at: float | None = None) -> Harness:
        env = dict(self.env, MQTT_CLIENT_ID=f"{self.prefix}-{next(_ids)}")
        self.h = Harness(FLOW, env=env, start_time=self.start_time if at is None else at)
        await self.h.start()
        return self.h

    async def crash(self) -> None:
        """Stop as a killed process would: what the delay nodes hold is lost, the context on
        disk is what was last written (the store writes within a second of a change)."""
        for node_id in DELAYS:
            self.h.inject(node_id, {"reset": True})
        await self.h.settle()
        await self.h.stop()

    async def restart(self, after: float, crash: bool = True) -> Harness:
        """Crash (or stop cleanly), then start again ``after`` seconds later with the same
        state directory."""
        at = self.h.clock.time() + after
        if crash:
            await self.crash()
        else:
            await self.h.stop()
        return await self.start(at)

    async def finish(self) -> None:
        """Stop the flow (its outboxes deliver what they hold), then make sure the subscriber
        has everything the broker got before: a marker published after it arrives last."""
        if self.h is not None and self.h.engine.started:
            await self.h.stop()
        await self.broker_sync()

    async def broker_sync(self) -> None:
        import paho.mqtt.client as paho

        marker = f"{self.prefix}/_sync"
        done = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.on_publish = lambda *a: done.set()
        c.connect("127.0.0.1", self.mosquitto.port, keepalive=5)
        c.loop_start()
        try:
            c.publish(marker, b"sync", qos=1)
            await until(lambda: done.is_set(), what="the marker's PUBACK")
            await until(lambda: any(t == marker for t, _, _ in self.sub.got), what="the marker")
        finally:
            c.disconnect()
            c.loop_stop()

    async def close(self) -> None:
        try:
            if self.h is not None and self.h.engine.started:
                await self.h.stop()
        finally:
            self.sb.stop()
            self.sub.close()

    # ---- looking ----------------------------------------------------------------------------
    def requests(self, endpoint: str | None = None) -> list[RecordedRequest]:
        """What reached the sandbox; ``endpoint`` is ``token``, ``odr`` or ``odrstatus``."""
        reqs = list(self.sb.requests)
        if endpoint is None:
            return reqs
        return [r for r in reqs if r.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1] == endpoint]

    def sequence(self) -> list[str]:
        """Endpoints in the order they were called, with the HTTP status: ``["token 200", ...]``."""
        return [f"{r.path.rstrip('/').rsplit('/', 1)[-1]} {r.status}" for r in self.sb.requests]

    def published(self, topic: str) -> list[bytes]:
        """Payloads received on ``<prefix>/<topic>``, in order."""
        with self.sub.lock:
            return [p for t, p, _ in self.sub.got if t == f"{self.prefix}/{topic}"]

    def retained(self, topic: str, timeout: float = 5.0) -> bytes | None:
        """The retained message a new subscriber to ``<prefix>/<topic>`` gets, if any."""
        sub = Subscriber(self.mosquitto.port, f"{self.prefix}/{topic}")
        try:
            done = threading.Event()
            for _ in range(int(timeout / 0.05)):
                with sub.lock:
                    got = [(p, r) for _, p, r in sub.got]
                if got:
                    payload, retain = got[0]
                    return payload if retain else None
                done.wait(0.05)
            return None
        finally:
            sub.close()
