"""meterflow import: Node-RED flows.json -> flow YAML (the two SMT seed exports and small cases)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from meterflow import yamlpos
from meterflow.cli import main
from meterflow.flowfile import load_flow
from meterflow.nodered.importer import HA_DATA_ADAPTER_NAME, HEADERS_ADAPTER_NAME, import_flows
from meterflow.testing import Harness

REF = Path(__file__).resolve().parent / "data" / "nodered"
SEEDS = {year: json.loads((REF / f"smt-node-red-{year}.json").read_text()) for year in (2023, 2025)}
COMMENT = re.compile(r"- id: (\S+)\s+# nodered: (\S+)")


def imported(year: int, **kw):
    return import_flows(SEEDS[year], name=f"smt-{year}", **kw)


def by_nodered(text: str) -> dict[str, str]:
    """Node-RED id -> meterflow id (nodes the import added carry their own id as Node-RED id)."""
    return {nr: mf for mf, nr in COMMENT.findall(text) if nr != mf}


def nodes_of(text: str) -> dict[str, dict]:
    data = yamlpos.load(text).data
    return {n["id"]: n for n in (data.get("config") or []) + (data.get("nodes") or [])}


def wires_of(node: dict) -> list[list[str]]:
    w = node.get("wires") or []
    if w and all(isinstance(x, str) for x in w):
        return [w]
    return [list(x) for x in w]


@pytest.mark.parametrize("year", [2023, 2025])
def test_seed_imports_and_checks_apart_from_unsupported_nodes(year, tmp_path):
    pytest.importorskip("py_mini_racer")  # check compiles the function-js code
    result = imported(year)
    path = tmp_path / f"smt-{year}.yaml"
    path.write_text(result.text)
    spec = load_flow(str(path), env={}, for_run=False)
    errors = [p.message for p in spec.errors]
    assert all(m.startswith("unsupported Node-RED node type ") for m in errors), errors
    assert len(errors) == len(result.unsupported) == (1 if year == 2023 else 0)
    if year == 2023:
        assert errors == ["unsupported Node-RED node type server-state-changed: meterflow has no Home Assistant"
                          " state-change trigger (ha-server talks to the REST API, not the event stream); publish"
                          " the state over MQTT (HA mqtt_statestream) and import with --ha-statestream BASE_TOPIC"
                          " to get an mqtt-in node, or poll the state"]


@pytest.mark.parametrize("year", [2023, 2025])
def test_nothing_is_dropped_and_the_wiring_is_kept(year):
    seed = SEEDS[year]
    text = imported(year).text
    ids = by_nodered(text)
    assert set(ids) == {n["id"] for n in seed}  # every Node-RED object has its meterflow node
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", mf) for mf in ids.values())
    nodes = nodes_of(text)
    adapters = (HEADERS_ADAPTER_NAME, HA_DATA_ADAPTER_NAME)  # change nodes the import puts before a node
    feeds = {n["id"]: wires_of(n)[0][0] for n in nodes.values() if n.get("name") in adapters}
    entry = {nr: next((a for a, t in feeds.items() if t == mf), mf) for nr, mf in ids.items()}
    for nr in seed:
        if "x" not in nr or nr["type"] == "link out":
            continue
        got = wires_of(nodes[ids[nr["id"]]])
        want = [[entry[t] for t in out] for out in nr.get("wires", [])]
        while want and not want[-1]:
            want.pop()
        while len(got) < len(want):
            got.append([])
        assert got[: len(want)] == want, nr["id"]
    disabled = {ids[n["id"]] for n in seed if n.get("d")}
    assert disabled == {i for i, n in nodes.items() if n.get("disabled")}


def test_2023_mappings():
    text = imported(2023).text
    ids, nodes = by_nodered(text), nodes_of(text)
    request = nodes[ids["18bfa68f0764b928"]]
    assert request["type"] == "tls-request"
    assert (request["method"], request["url"], request["ret"]) == ("POST", "https://services.smartmetertexas.net/odr/", "obj")
    assert nodes[request["tls"]] == {"id": "letsencrypt_certificate", "type": "tls-profile", "name": "LetsEncrypt Certificate",
                                     "cert": "/ssl/fullchain.pem", "key": "/ssl/privkey.pem"}
    assert request["retry"] == {"attempts": 1}
    adapter = nodes["request_read_headers"]
    assert adapter["type"] == "change" and adapter["wires"] == ["request_read"]
    assert nodes[ids["3dbb58287814bc8c"]] == {"id": "protoerror", "type": "catch", "name": "ProtoError",
                                              "scope": ["request_read"], "wires": ["request_read_2_headers"]}
    email = nodes[ids["752ce38662105084"]]
    assert email["type"] == "email" and email["name"] == "smartmeter" and "to" not in email
    smtp = nodes[email["server"]]
    assert (smtp["type"], smtp["host"], smtp["port"], smtp["security"], smtp["verify"]) == (
        "smtp-server", "smtp.email.com", 465, "implicit_tls", False)
    assert nodes[ids["0d29d9f0aa81174f"]] == {"id": "date_format", "type": "date-format", "input_tz": "America/Chicago",
                                              "format": "YYYY-MM-DD HH:mm:ss", "wires": ["set_last_energy_read_data"]}
    ha = nodes[ids["fe3a724f5d8b2ca8"]]
    assert (ha["type"], ha["domain"], ha["service"], ha["entity_id"]) == (
        "ha-service", "input_boolean", "turn_off", "input_boolean.cert_updated")
    assert nodes[ha["server"]]["type"] == "ha-server"
    creds = nodes[ids["cbada3ec97e2ecbf"]]
    assert creds["fields"] == {"username": "username", "password": "password", "esiid": "esiid",
                               "meternumber": "meternumber"}
    switch = nodes[ids["08897231cdc297bc"]]
    assert switch["rules"] == [{"op": "eq", "value": "0", "value_type": "str"}, {"op": "eq", "value": "1", "value_type": "str"},
                               {"op": "eq", "value": "PEN", "value_type": "str"}, {"op": "else"}]
    assert nodes[ids["ac3eb73f119c1fd8"]]["property_type"] == "flow"
    change = nodes[ids["36d01fe5105891b1"]]
    assert change["rules"][1] == {"set": "headers.content-type", "to": "application/json"}
    assert nodes[ids["a6f5144cb8671bdf"]]["delay"] == "3m"
    assert nodes[ids["44901286a51a41a2"]] == {"id": "read_meter", "type": "inject", "name": "Read Meter",
                                              "payload_type": "date", "topic": "", "once": True, "once_delay": "5s",
                                              "repeat": "1m", "wires": ["check_if_55_minute"]}
    fn = nodes[ids["a8f15d236b6bc038"]]
    assert fn["type"] == "function-js" and fn["name"] == "check if 55 minute"
    assert "# nodered: 2794db7182b8c484 @90,620" in text


def test_2025_cron_plus_becomes_a_cron_inject():
    nodes = nodes_of(imported(2025).text)
    assert nodes["read_meter"] == {"id": "read_meter", "type": "inject", "name": "Read Meter", "cron": "0 55 * * * * *",
                                   "payload_type": "date", "topic": "topic1", "wires": ["apply_http_config"]}


def test_function_code_is_kept_byte_for_byte():
    for year, seed in SEEDS.items():
        text = imported(year).text
        ids, nodes = by_nodered(text), nodes_of(text)
        for nr in seed:
            if nr["type"] == "function":
                assert nodes[ids[nr["id"]]]["code"] == nr["func"]


async def test_moment_becomes_date_format_and_converts_the_smt_read_date():
    """The 2023 flow's moment node: SMT's readDate (M/D/Y, Chicago) -> YYYY-MM-DD HH:mm:ss for HA."""
    nodes = nodes_of(imported(2023).text)
    node = dict(nodes["date_format"], wires=["out"])
    text = "meterflow: 1\nnodes:\n  - " + json.dumps(node) + "\n  - {id: out, type: junction}\n"
    async with Harness(text=text) as h:
        await h.send("date_format", {"payload": "04/04/2020 21:25:34"})
        await h.send("date_format", {"payload": "12/31/2023 23:59:59"})
        assert h.payloads("out") == ["2020-04-04 21:25:34", "2023-12-31 23:59:59"]


async def test_date_format_inputs_outputs_zones_and_adjustments():
    text = """meterflow: 1
nodes:
  - {id: iso, type: date-format, input_tz: America/Chicago, wires: [out]}
  - {id: now, type: date-format, input_type: now, output_tz: UTC, format: "dddd Do MMMM YYYY, HH:mm:ss [UTC]", wires: [out]}
  - id: week-ago
    type: date-format
    input: payload.when
    input_tz: Europe/London
    format: YYYY-MM-DD
    adjust_amount: -7
    adjust_unit: days
    output: flow.last_week
    topic: dates
    wires: [out]
  - {id: out, type: junction}
"""
    async with Harness(text=text, start_time=1_700_000_000) as h:  # 2023-11-14 22:13:20 UTC
        await h.send("iso", {"payload": "04/04/2020 21:25:34"})
        await h.send("now", {"payload": None})
        await h.send("week-ago", {"payload": {"when": "2024-03-31T01:30:00"}})
        await h.send("iso", {"payload": "not a date"})
        await h.send("iso", {"payload": 1_586_053_534_000})
        out = h.messages("out")
        assert out[0]["payload"] == "2020-04-05T02:25:34.000Z"
        assert out[1]["payload"] == "Tuesday 14th November 2023, 22:13:20 UTC"
        assert h.flow_context.get("last_week") == "2024-03-24" and out[2]["topic"] == "dates"
        assert out[3]["payload"] == ""  # with a warning, as the moment node
        assert out[4]["payload"] == "2020-04-05T02:25:34.000Z"


def test_date_format_checks_its_zones(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("meterflow: 1\nnodes:\n  - {id: d, type: date-format, input_tz: Mars/Olympus}\n")
    [problem] = load_flow(str(path), env={}, for_run=False).errors
    assert "unknown time zone 'Mars/Olympus'" in problem.message


def test_state_trigger_through_mqtt_statestream():
    nodes = nodes_of(imported(2023, ha_statestream="homeassistant").text)
    node = nodes["current_certificate_expired"]
    assert (node["type"], node["broker"], node["topic"]) == ("mqtt-in", "mqtt", "homeassistant/input_boolean/cert_updated/state")
    assert node["wires"] == ["file_in_2"]


def _flow(*nodes: dict) -> list[dict]:
    return [{"id": "t1", "type": "tab", "label": "Main"}, *nodes]


def H(name: str) -> str:
    """A Node-RED-looking id (16 hex digits) for a short test name."""
    import hashlib

    return hashlib.md5(name.encode()).hexdigest()[:16]


def _n(id_: str, type_: str, wires=(), **fields) -> dict:
    return {"id": H(id_), "type": type_, "z": "t1", "x": 100, "y": 100, "wires": [[H(t) for t in w] for w in wires],
            **fields}


def test_unknown_types_are_kept_as_unsupported_nodes(tmp_path):
    flows = _flow(_n("aaaa000000000001", "rbe", [["aaaa000000000002"]], name="Only changes", func="rbe", gap=""),
                  _n("aaaa000000000002", "node-red-contrib-foo", [], name="Foo", setting=1),
                  {"id": "aaaa000000000003", "type": "foo-config", "host": "x"})
    result = import_flows(flows, name="x")
    nodes = nodes_of(result.text)
    assert nodes["only_changes"]["type"] == "unsupported"
    assert nodes["only_changes"]["nodered"] == {"name": "Only changes", "func": "rbe", "gap": ""}
    assert nodes["only_changes"]["wires"] == ["foo"]
    assert nodes["foo"]["nodered_type"] == "node-red-contrib-foo"
    assert nodes["foo_config"]["type"] == "unsupported-config"
    path = tmp_path / "x.yaml"
    path.write_text(result.text)
    messages = [p.message for p in load_flow(str(path), env={}, for_run=False).errors]
    assert "unsupported Node-RED node type rbe: no filter (report-by-exception) node yet" in messages
    assert any(m.startswith("unsupported Node-RED node type node-red-contrib-foo: ") for m in messages)
    assert any(m.startswith("unsupported Node-RED node type foo-config: ") for m in messages)


def test_subflows_are_flattened():
    flows = [{"id": "t1", "type": "tab", "label": "Main"},
             {"id": H("sf"), "type": "subflow", "name": "Double", "in": [{"wires": [{"id": H("inner")}]}],
              "out": [{"wires": [{"id": H("inner"), "port": 0}]}], "env": []},
             {"id": H("inner"), "type": "change", "z": H("sf"), "x": 1, "y": 1, "wires": [[]],
              "rules": [{"t": "set", "p": "payload", "pt": "msg", "to": "$$.payload * 2", "tot": "jsonata"}]},
             _n("in", "inject", [["inst"]], props=[{"p": "payload", "v": "21", "vt": "num"}]),
             _n("inst", f"subflow:{H('sf')}", [["out"]], name="twice"),
             _n("out", "debug", [], name="Out")]
    nodes = nodes_of(import_flows(flows, name="x").text)
    assert nodes["inject"]["wires"] == ["twice_change"]
    assert nodes["twice_change"]["wires"] == ["out"]
    assert nodes["twice_change"]["name"] == "twice/change"


def test_tabs_disabled_tabs_and_the_tab_filter():
    flows = [{"id": "t1", "type": "tab", "label": "On"}, {"id": "t2", "type": "tab", "label": "Off", "disabled": True},
             {"id": H("a"), "type": "junction", "z": "t1", "x": 1, "y": 1, "wires": []},
             {"id": H("b"), "type": "comment", "name": "b", "z": "t2", "x": 1, "y": 1, "wires": []}]
    nodes = nodes_of(import_flows(flows, name="x").text)
    assert "disabled" not in nodes["junction"] and nodes["b"]["disabled"] is True
    only = nodes_of(import_flows(flows, name="x", tab="On").text)
    assert set(only) == {"junction"}


async def test_an_imported_flow_runs_like_node_red():
    """inject props, legacy change fields, switch on loose types, template, JS function, link out/in."""
    pytest.importorskip("py_mini_racer")
    flows = _flow(
        _n("i", "inject", [["c"]], props=[{"p": "payload"}, {"p": "topic", "vt": "str"}], payload='{"n": "<5>"}',
           payloadType="json", topic="t", repeat="", crontab="", once=False),
        _n("c", "change", [["s"]], action="replace", property="payload.count", to="msg.payload.n", reg=False),
        _n("s", "switch", [["tpl"], ["f"]], property="payload", propertyType="msg", checkall="false",
           rules=[{"t": "hask", "v": "count", "vt": "str"}, {"t": "else"}]),
        _n("tpl", "template", [["f"]], field="payload", fieldType="msg", syntax="mustache", output="str",
           template="count={{payload.count}} & ${NOPE}"),
        _n("f", "function", [["lo"]], func="msg.payload = `${msg.payload}!`; return msg;", outputs=1),
        _n("lo", "link out", [], mode="link", links=[H("li")]),
        _n("li", "link in", [["d"]], links=[]),
        _n("d", "debug", [], complete="payload", targetType="msg"))
    text = import_flows(flows, name="x").text
    async with Harness(text=text) as h:
        await h.trigger("inject")
        await h.send("switch", {"payload": 7})  # no 'count': the else output goes straight to the function
        assert h.payloads("debug") == ["count=&lt;5&gt; & ${NOPE}!", "7!"]


def test_cli_import_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "smt.yaml"
    assert main(["import", str(REF / "smt-node-red-2025.json"), "-o", str(out)]) == 0
    first = out.read_text()
    assert main(["import", str(REF / "smt-node-red-2025.json"), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["import", str(REF / "smt-node-red-2025.json"), "-o", str(out), "--force"]) == 0
    assert out.read_text() == first
    (tmp_path / "bad.json").write_text('{"not": "flows"}')
    assert main(["import", str(tmp_path / "bad.json"), "-o", str(tmp_path / "bad.yaml")]) == 1
    assert "not a Node-RED flows.json" in capsys.readouterr().err


# ---- the imported 2023 export against the SMT sandbox, next to flows/smt.yaml ------------------------
def _sandboxed_2023(env, ha_url: str) -> str:
    """The imported 2023 flow with its settings pointed at the test's sandbox and services,
    as a user edits them after an import (certificate paths, URLs, broker port, SMTP server).
    Its Home Assistant state trigger becomes an mqtt-in (--ha-statestream)."""
    from services import SMTP_PASSWORD, SMTP_USER
    from smt_env import ESIID, METER, PASSWORD, USER

    from meterflow.credentials import CredentialStore

    text = imported(2023, ha_statestream="homeassistant").text
    edits = [("https://services.smartmetertexas.net", env.sandbox.url),
             ("    key: /ssl/privkey.pem\n", f"    key: {env.current_key}\n    ca: {env.sandbox.ca_path}\n"),
             ("    key: /media/privkey.pem\n", f"    key: {env.previous_key}\n    ca: {env.sandbox.ca_path}\n"),
             ("/ssl/fullchain.pem", env.current_cert), ("/media/fullchain.pem", env.previous_cert),
             ("    host: 127.0.0.1\n", f"    host: 127.0.0.1\n    port: {env.mosquitto.port}\n"),
             ("    host: smtp.email.com\n    port: 465\n", f"    host: 127.0.0.1\n    port: {env.smtp.implicit_port}\n"),
             ("    url: http://supervisor/core\n", f"    url: {ha_url}\n")]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    store = CredentialStore()
    for field, value in (("username", USER), ("password", PASSWORD), ("esiid", ESIID), ("meternumber", METER)):
        store.set("smt-2023-credentials", field, value)
    store.set("smt-2023-smtp-email-com", "username", SMTP_USER)
    store.set("smt-2023-smtp-email-com", "password", SMTP_PASSWORD)
    store.set("smt-2023-home-assistant", "token", "ha-token")
    return text


@pytest.fixture
def smt_pair(tmp_path, monkeypatch, mosquitto, smtp, http_recorder):
    """Two sandboxes (one per flow) on the same broker, SMTP server and HA stand-in."""
    pytest.importorskip("py_mini_racer")
    from smt_env import smt_env

    http_recorder.default = (200, {"Content-Type": "application/json"}, b"[]")
    made = []

    def make(sub: str):
        (tmp_path / sub).mkdir()
        env = smt_env(tmp_path / sub, monkeypatch, mosquitto, smtp, ha=http_recorder,
                      support="support@smartmetertexas.com")
        made.append(env)
        return env

    yield make
    for env in made:
        env.sandbox.stop()


async def _run_imported(env, ha_url: str, minutes: float, on_turn_on=None):
    from smt_env import start_of_minute_54

    h = Harness(text=_sandboxed_2023(env, ha_url), file=str(env.tmp / "smt-2023.yaml"), env=env.env,
                start_time=start_of_minute_54())
    env.sandbox.clock = h.clock.time
    async with h:
        if on_turn_on is not None:  # HA's state arrives over MQTT: be subscribed before it is sent
            from services import until

            brokers = [n for n in h.flow.nodes.values() if n.type == "mqtt-broker"]
            await until(lambda: all(b.connected for b in brokers), what="the flow's MQTT connection")
        for _ in range(int(minutes * 6)):
            await h.advance(10)
            if on_turn_on is not None:
                await on_turn_on()
    return h


async def _readings(env, run) -> list:
    """MQTT readings and correlation ids while ``run()`` runs the flow."""
    from services import Subscriber, until

    sub = Subscriber(env.mosquitto.port, "smt/#")
    try:
        await run()
        await until(lambda: any(t == "smt/correlationid" for t, _, _ in list(sub.got)), 10, "a reading")
        await asyncio.sleep(0.3)  # real time for a (wrong) second publish to show up
        with sub.lock:
            return [(t, p, r) for t, p, r in sub.got if t in ("smt/reading", "smt/correlationid")]
    finally:
        sub.close()


async def _smt_yaml(env, seconds: float = 120) -> None:
    async with env.harness() as h:
        await h.advance(seconds)


async def test_imported_2023_flow_publishes_the_same_readings_as_smt_yaml(smt_pair, http_recorder):
    ours = smt_pair("smt_yaml")
    expected = await _readings(ours, lambda: _smt_yaml(ours))
    retained = await ours.retained("smt/reading")
    theirs = smt_pair("imported")  # (clears what the first run left retained on the broker)
    got = await _readings(theirs, lambda: _run_imported(theirs, http_recorder.url, 2))
    assert got == expected == [("smt/reading", b"23459.133", False), ("smt/correlationid", b"100001", False)]
    assert await theirs.retained("smt/reading") == retained == [(b"23459.133", True)]
    assert len(theirs.requests("odr")) == len(ours.requests("odr")) == 1
    assert [r.status for r in theirs.requests()] == [200] * 4  # ODR, PEN, PEN, "0"


def _ha_statestream(env, http_recorder, published: list):
    """Home Assistant's mqtt_statestream, for the input_boolean the flow turns on."""
    import paho.mqtt.client as paho

    async def follow() -> None:
        calls = [r for r in http_recorder.requests if r.path == "/api/services/input_boolean/turn_on"]
        if calls and not published:
            c = paho.Client(paho.CallbackAPIVersion.VERSION2)
            c.connect("127.0.0.1", env.mosquitto.port)
            c.loop_start()
            c.publish("homeassistant/input_boolean/cert_updated/state", b"on").wait_for_publish(5)
            c.loop_stop()
            c.disconnect()
            published.append(True)
            await asyncio.sleep(0.5)  # the flow's subscription delivers on the real clock

    return follow


async def _certificate_mail(env, run) -> bytes:
    from services import until

    env.sandbox.unregister_client_cert(env.current_cert)  # SMT has not installed the renewal yet
    before = len(env.emails())
    await run()
    await until(lambda: len(env.emails()) > before, 10, "the certificate email")
    await asyncio.sleep(0.3)
    [mail] = env.emails()[before:]
    [att] = list(mail.iter_attachments())
    assert att.get_filename() == "fullchain.pem"
    assert {r.client_cert for r in env.requests()} == {env.previous_fp}  # every request fell back
    return att.get_payload(decode=True)


async def test_imported_2023_flow_emails_the_same_certificate_as_smt_yaml(smt_pair, http_recorder):
    """SMT has not installed the renewed certificate: both flows fall back to the previous one,
    read the meter, and e-mail the current certificate (the one SMT must install) to support."""
    ours = smt_pair("smt_yaml")
    ours_mail = await _certificate_mail(ours, lambda: _smt_yaml(ours))
    theirs = smt_pair("imported")
    published: list = []
    theirs_mail = await _certificate_mail(
        theirs, lambda: _run_imported(theirs, http_recorder.url, 2, _ha_statestream(theirs, http_recorder, published)))
    assert published  # the imported flow turned HA's cert_updated on, and that triggered the e-mail
    assert ours_mail == Path(ours.current_cert).read_bytes()
    assert theirs_mail == Path(theirs.current_cert).read_bytes()
