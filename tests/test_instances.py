"""One flow file, many meters: instances keep their credentials and context apart."""

import json
import os
import signal
import subprocess
import sys
import time

from meterflow.clock import VirtualClock
from meterflow.credentials import CredentialStore
from meterflow.instances import load_flow_instances, load_instances
from meterflow.runtime import Engine

FLOW = """meterflow: 1
name: meter
context: {store: file, dir: state}
nodes:
  - id: go
    type: inject
    once: true
    once_delay: 0s
    wires: [creds]
  - id: creds
    type: credentials
    credential: ${METER_CREDENTIAL}
    fields: {user: username}
    wires: [count]
  - id: count
    type: change
    rules:
      - {set: flow.reads, to: '$flowContext("reads") ? $flowContext("reads") + 1 : 1', to_type: jsonata}
      - {set: topic, to: "${TOPIC_PREFIX}/reading"}
      - {set: payload, to: '{"user": user, "instance": "${METERFLOW_INSTANCE}"}', to_type: jsonata}
    wires: [show]
  - {id: show, type: debug, property: msg}
"""


def setup_store(tmp_path, monkeypatch):
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "creds.json"))
    monkeypatch.setenv("METERFLOW_KEY_FILE", str(tmp_path / "creds.key"))
    store = CredentialStore()
    store.set("smt-house", "username", "house-user")
    store.set("smt-barn", "username", "barn-user")
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "meters.yaml").write_text(
        "house:\n  METER_CREDENTIAL: smt-house\n  TOPIC_PREFIX: smt/house\n"
        "barn:\n  METER_CREDENTIAL: smt-barn\n  TOPIC_PREFIX: smt/barn\n")


async def test_two_instances_keep_credentials_and_context_apart(tmp_path, monkeypatch):
    setup_store(tmp_path, monkeypatch)
    instances, problems = load_instances(str(tmp_path / "meters.yaml"))
    assert problems == [] and list(instances) == ["house", "barn"]
    shown = []
    for _ in range(2):  # a restart: each instance continues its own counter
        engine = Engine(clock=VirtualClock())
        engine.debug_listeners.append(lambda node, value, msg: shown.append((node.flow.name, msg)))
        for name, spec in load_flow_instances(str(tmp_path / "flow.yaml"), instances):
            assert spec.errors == []
            engine.load(spec, name)
        await engine.start()
        await engine.clock.advance(1)
        await engine.stop()
    by_flow = {name: v for name, v in shown}
    assert by_flow["meter@house"]["payload"] == {"user": "house-user", "instance": "house"}
    assert by_flow["meter@barn"]["payload"]["user"] == "barn-user"
    assert by_flow["meter@barn"]["topic"] == "smt/barn/reading"
    for name in ("house", "barn"):
        data = json.loads((tmp_path / "state" / name / "flow.json").read_text())
        assert data["reads"] == 2


def test_instances_file_problems_have_positions(tmp_path):
    bad = tmp_path / "meters.yaml"
    bad.write_text("house:\n  METER CREDENTIAL: x\nbarn: [1, 2]\n")
    _, problems = load_instances(str(bad))
    assert [str(p) for p in problems] == [
        f"{bad}:2:3: error: instance 'house': 'METER CREDENTIAL' is not an environment variable name",
        f"{bad}:3:7: error: instance 'barn': expected a mapping of environment variables",
    ]


def test_cli_runs_every_instance_in_one_process(tmp_path, monkeypatch):
    setup_store(tmp_path, monkeypatch)
    env = dict(os.environ, METERFLOW_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "meterflow.cli", "run", str(tmp_path / "flow.yaml"),
                             "--instances", str(tmp_path / "meters.yaml"), "--log-format", "json"],
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = set()
    deadline = time.monotonic() + 20
    for line in proc.stderr:
        if '"instance"' in line and "debug" in line:
            seen.add(json.loads(line)["value"]["payload"]["instance"])
        if seen == {"house", "barn"} or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert seen == {"house", "barn"}
