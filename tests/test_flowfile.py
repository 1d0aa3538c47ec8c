"""The flow-file loader: YAML 1.2 typing, positions, substitutions, includes, wires, disabled nodes.

See docs/flow-format.md for the format these tests pin down.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from meterflow import redact, yamlpos
from meterflow.flowfile import load_flow
from meterflow.node import Node
from meterflow.plugins import registry
from meterflow.schema import Field
from meterflow.testing import FlowLoadError, Harness

DOC = Path(__file__).resolve().parent.parent / "docs" / "flow-format.md"


# ---- node types used only here ------------------------------------------------------------
class Probe(Node):
    """Holds typed fields so substitution typing can be observed in its config."""

    type = "probe"
    summary = "test node with typed fields"
    schema = {
        "port": Field("int", "a port"),
        "host": Field("str", "a host"),
        "flag": Field("bool", "a flag"),
        "value": Field("any", "anything"),
        "text": Field("str", "text"),
    }


class Router(Node):
    """Named outputs from config: sends each message to the output named by msg.topic."""

    type = "router"
    summary = "test node with named outputs"
    outputs = 2
    schema = {"routes": Field("list", "output names", item=Field("str"), default=lambda: ["high", "low"])}

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return list(config["routes"])

    def on_input(self, msg):
        out: list = [None] * len(self.config["routes"])
        out[self.config["routes"].index(msg["topic"])] = msg
        return out


class Broker(Node):
    type = "test-broker"
    summary = "test config node"
    is_config = True
    schema = {"host": Field("str", "host", required=True), "port": Field("int", "port", default=1883)}


class Publish(Node):
    type = "test-publish"
    summary = "test node naming a test-broker"
    outputs = 0
    schema = {"broker": Field("ref", "broker", ref="test-broker", required=True)}

    @classmethod
    def output_names(cls, config):
        return []

    @classmethod
    def references(cls, config):
        return [(("broker",), config["broker"], "test-broker")]


class Reg:
    """The installed registry plus this module's test types and substitution schemes."""

    def __init__(self, substitutions: dict | None = None):
        base = registry()
        self.types = {**base.types, **{c.type: c for c in (Probe, Router, Broker, Publish)}}
        self.substitutions = {**base.substitutions, **(substitutions or {})}


def load(text: str, env: dict | None = None, file: str = "flow.yaml", reg=None):
    return load_flow(file, reg or Reg(), text=textwrap.dedent(text), env=env or {})


def errors(spec) -> list[str]:
    return [str(p) for p in spec.errors]


# ---- YAML 1.2 typing ---------------------------------------------------------------------
@pytest.mark.parametrize("text", ["12:30", "0123", "off", "on", "yes", "no", "0x1F", "0o17", "1_000", "y", "n",
                                  "12:30:45", ".inf", "2026-01-01", "1.", "01883"])
def test_values_yaml_11_would_retype_stay_strings(text):
    assert yamlpos.load(f"v: {text}\n").data == {"v": text}


@pytest.mark.parametrize("text, value", [
    ("true", True), ("false", False), ("True", True), ("FALSE", False),
    ("null", None), ("~", None), ("", None),
    ("0", 0), ("42", 42), ("-7", -7), ("+3", 3),
    ("3.5", 3.5), ("-0.25", -0.25), (".5", 0.5), ("1e3", 1000.0), ("2.5E-1", 0.25),
])
def test_core_schema_values_are_typed(text, value):
    got = yamlpos.load(f"v: {text}\n").data["v"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ['"42"', "'true'", '"null"', '"0123"', "|\n  12:30"])
def test_quoted_and_block_scalars_are_strings(text):
    v = yamlpos.load(f"v: {text}\n").data["v"]
    assert isinstance(v, str) and v.strip() in ("42", "true", "null", "0123", "12:30")


def test_explicit_str_tag_is_honoured():
    assert yamlpos.load("v: !!str 123\n").data == {"v": "123"}


def test_anchors_aliases_and_merge_keys():
    data = yamlpos.load(textwrap.dedent("""\
        defaults: &retained {qos: 1, retain: true}
        a:
          topic: smt/reading
          retain: false          # written before '<<': wins over the merged value
          <<: *retained
        b: *retained
    """)).data
    assert data["a"] == {"topic": "smt/reading", "retain": False, "qos": 1}
    assert data["b"] == {"qos": 1, "retain": True}


def test_merge_key_override_written_after_the_merge():
    assert yamlpos.load("d: &d {qos: 1}\na:\n  <<: *d\n  qos: 2\n").data["a"] == {"qos": 2}


def test_one_document_per_file():
    with pytest.raises(yamlpos.YamlError, match="expected a single document"):
        yamlpos.load("meterflow: 1\n---\nmeterflow: 1\n")


def test_local_tags_are_rejected():
    with pytest.raises(yamlpos.YamlError, match="unsupported YAML tag !include") as e:
        yamlpos.load("a: 1\nb: !include other.yaml\n")
    assert (e.value.line, e.value.col) == (2, 4)


def test_a_time_in_a_string_field_is_kept_as_written():
    spec = load("""\
        meterflow: 1
        nodes:
          - id: p
            type: probe
            text: 12:30
            host: 0123
    """)
    assert not spec.problems
    assert spec.node("p").config["text"] == "12:30" and spec.node("p").config["host"] == "0123"


# ---- positions ------------------------------------------------------------------------------
def test_every_value_keeps_its_line_and_column():
    doc = yamlpos.load(textwrap.dedent("""\
        meterflow: 1
        nodes:
          - id: fmt
            type: change
            rules:
              - set: payload.reading
                to: {kwh: [1, 2.5]}
    """), "f.yaml")
    m = doc.marks
    assert m[("meterflow",)] == yamlpos.Mark(1, 12)
    assert m[("nodes", 0)] == yamlpos.Mark(3, 5)
    assert m[("nodes", 0, "rules", 0, "set")] == yamlpos.Mark(6, 14)
    assert m[("nodes", 0, "rules", 0, "to", "kwh", 1)] == yamlpos.Mark(7, 23)
    assert doc.key_marks[("nodes", 0, "rules", 0, "to")] == yamlpos.Mark(7, 9)
    # a missing path falls back to its nearest existing ancestor
    assert doc.mark(("nodes", 0, "rules", 0, "nosuch", 3)) == yamlpos.Mark(6, 9)


def test_node_problems_point_at_the_offending_value():
    spec = load("""\
        meterflow: 1
        nodes:
          - id: p
            type: probe
            port: "1883"
    """)
    assert errors(spec) == ["flow.yaml:5:11: error: field 'port': expected an integer, got string '1883'"]


def test_problems_are_sorted_by_position_and_all_reported():
    spec = load("""\
        meterflow: 1
        nodes:
          - id: b
            type: probe
            flag: off
          - id: a
            type: nosuch
          - id: c
            type: probe
            port: 12:30
    """)
    assert [(p.line, p.col) for p in spec.problems] == [(5, 11), (7, 11), (10, 11)]


# ---- duplicate keys -----------------------------------------------------------------------------
def test_duplicate_key_is_an_error_with_both_positions():
    with pytest.raises(yamlpos.YamlError) as e:
        yamlpos.load("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert (e.value.line, e.value.col) == (4, 3)
    assert e.value.message == "duplicate key 'c' (first defined at line 3)"


def test_duplicate_key_in_a_flow_mapping():
    with pytest.raises(yamlpos.YamlError, match="duplicate key 'x'"):
        yamlpos.load("v: {x: 1, y: 2, x: 3}\n")


def test_duplicate_key_in_a_flow_file_is_reported_not_raised():
    spec = load("meterflow: 1\nmeterflow: 1\n")
    assert errors(spec) == ["flow.yaml:2:1: error: duplicate key 'meterflow' (first defined at line 1)"]


# ---- substitutions ------------------------------------------------------------------------------
SUBST = """\
    meterflow: 1
    nodes:
      - id: p
        type: probe
        host: ${MQTT_HOST}
        port: ${MQTT_PORT:-1883}
        flag: ${VERBOSE:-false}
        text: mqtt://${MQTT_HOST}:${MQTT_PORT:-1883}/$${NOT_AN_ENV}
        value: ${METER:-0123}
"""


def test_env_references_and_defaults():
    spec = load(SUBST, env={"MQTT_HOST": "broker.lan"})
    assert not spec.problems
    c = spec.node("p").config
    assert c["host"] == "broker.lan"
    assert c["port"] == 1883 and type(c["port"]) is int  # a whole-value reference is typed (YAML 1.2)
    assert c["flag"] is False
    assert c["text"] == "mqtt://broker.lan:1883/${NOT_AN_ENV}"  # inside text: text; $${...} is literal
    assert c["value"] == "0123"  # the same typing rules: leading zeros stay text


def test_env_value_wins_over_default_and_is_typed_too():
    c = load(SUBST, env={"MQTT_HOST": "h", "MQTT_PORT": "8883", "VERBOSE": "true"}).node("p").config
    assert (c["port"], c["flag"]) == (8883, True)


def test_env_value_is_typed_then_validated():
    spec = load(SUBST, env={"MQTT_HOST": "h", "MQTT_PORT": "eighty"})
    assert errors(spec) == ["flow.yaml:6:11: error: field 'port': expected an integer, got string 'eighty'"]


def test_unset_env_without_default_is_an_error_at_its_position():
    spec = load(SUBST)
    assert errors(spec) == ["flow.yaml:5:11: error: environment variable MQTT_HOST is not set "
                            "(write ${MQTT_HOST:-default} for a default)",
                            "flow.yaml:8:11: error: environment variable MQTT_HOST is not set "
                            "(write ${MQTT_HOST:-default} for a default)"]


def test_a_quoted_reference_stays_a_string():
    spec = load("meterflow: 1\nnodes:\n  - id: p\n    type: probe\n    value: \"${ESIID}\"\n",
                env={"ESIID": "10443720001234567"})
    assert spec.node("p").config["value"] == "10443720001234567"


def test_empty_env_takes_the_default_like_the_shell():
    c = load("meterflow: 1\nnodes:\n  - id: p\n    type: probe\n    port: ${PORT:-1883}\n", env={"PORT": ""})
    assert c.node("p").config["port"] == 1883


def test_empty_default_gives_null_unless_quoted():
    c = load("meterflow: 1\nnodes:\n  - id: p\n    type: probe\n    value: ${X:-}\n    text: '${X:-}'\n").node("p").config
    assert c["value"] is None
    assert c["text"] == ""


def test_scheme_reference_resolves_through_plugin_and_is_a_secret():
    def vault(key: str) -> str:
        return {"smt.password": "s3cret-pw-123"}[key]

    spec = load("meterflow: 1\nnodes:\n  - {id: p, type: probe, text: '${vault:smt.password}'}\n",
                reg=Reg({"vault": vault}))
    assert spec.node("p").config["text"] == "s3cret-pw-123"
    assert redact.redact("login with s3cret-pw-123") == "login with ***"


def test_scheme_errors_are_reported():
    from meterflow.errors import FlowError

    def vault(key: str) -> str:
        raise FlowError(f"no credential {key!r}")

    spec = load("meterflow: 1\nnodes:\n  - {id: p, type: probe, text: '${vault:nope}'}\n", reg=Reg({"vault": vault}))
    assert errors(spec) == ["flow.yaml:3:32: error: no credential 'nope'"]


def test_a_missing_secret_warns_for_check_and_fails_for_run():
    """The file is fine; this machine lacks the secret: check warns, run refuses."""
    from meterflow.errors import FlowError

    def vault(key: str) -> str:
        raise FlowError(f"no credential {key!r}")

    text = "meterflow: 1\nnodes:\n  - {id: p, type: probe, text: '${vault:smt.password}'}\n"
    for for_run, severity in ((False, "warning"), (True, "error")):
        spec = load_flow("flow.yaml", Reg({"vault": vault}), text=text, env={}, for_run=for_run)
        assert [str(p) for p in spec.problems] == [f"flow.yaml:3:32: {severity}: no credential 'smt.password'"]


def test_a_disabled_node_does_not_look_up_its_secrets():
    calls = []

    def vault(key: str) -> str:
        calls.append(key)
        return "x" * 8

    spec = load("meterflow: 1\nnodes:\n  - {id: p, type: probe, disabled: true, text: '${vault:ha.token}'}\n",
                reg=Reg({"vault": vault}))
    assert not spec.problems and calls == []
    assert spec.node("p").config["text"] == "${vault:ha.token}"


def test_secret_looking_env_names_are_redacted():
    load("meterflow: 1\nnodes:\n  - {id: p, type: probe, text: '${SMT_PASSWORD}'}\n",
         env={"SMT_PASSWORD": "pw-from-env-42"})
    assert redact.redact("pw-from-env-42") == "***"


def test_substitution_applies_to_nodes_not_to_top_level_keys():
    spec = load("meterflow: 1\nname: ${FLOW_NAME}\nnodes: []\n", env={"FLOW_NAME": "x"})
    assert spec.name == "${FLOW_NAME}" and not spec.problems


# ---- includes --------------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_includes_are_relative_to_the_including_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the working directory must not matter
    write(tmp_path / "flows" / "shared" / "mqtt.yaml", """\
        include: [more.yaml]        # relative to shared/
        config:
          - id: broker
            type: test-broker
            host: localhost
    """)
    write(tmp_path / "flows" / "shared" / "more.yaml", """\
        meterflow: 1                # allowed, not needed
        nodes:
          - id: shared-log
            type: debug
    """)
    main = write(tmp_path / "flows" / "main.yaml", """\
        meterflow: 1
        include: [shared/mqtt.yaml]
        nodes:
          - id: pub
            type: test-publish
            broker: broker
    """)
    spec = load_flow(main, Reg(), env={})
    assert not spec.problems
    assert sorted(n.id for n in spec.nodes) == ["broker", "pub", "shared-log"]
    broker = spec.node("broker")
    assert broker.is_config and broker.config == {"host": "localhost", "port": 1883}
    assert broker.doc.file.endswith("mqtt.yaml") and broker.mark(("host",)) == yamlpos.Mark(5, 11)


def test_problems_in_an_included_file_point_into_it(tmp_path):
    write(tmp_path / "common.yaml", """\
        config:
          - id: broker
            type: test-broker
            port: 99999999999999999999x
    """)
    main = write(tmp_path / "main.yaml", "meterflow: 1\ninclude: [common.yaml]\nnodes: []\n")
    spec = load_flow(main, Reg(), env={})
    common = tmp_path / "common.yaml"
    assert [str(p) for p in spec.problems] == [
        f"{common}:2:5: error: missing required field 'host'",
        f"{common}:2:9: warning: config node 'broker' is not used by any node",
        f"{common}:4:11: error: field 'port': expected an integer, got string '99999999999999999999x'",
    ]


def test_a_flow_that_includes_itself_is_reported(tmp_path):
    main = write(tmp_path / "main.yaml", "meterflow: 1\ninclude: [main.yaml]\nnodes: []\n")
    assert [p.message for p in load_flow(main, Reg(), env={}).problems] == [
        "'main.yaml' is included more than once (or includes itself)"]


# ---- disabled nodes ----------------------------------------------------------------------------------
DISABLED = """\
    meterflow: 1
    nodes:
      - id: start
        type: change
        rules: [{set: topic, to: t}]
        wires: [off-switch, direct]
      - id: off-switch
        type: change
        disabled: true
        rules: [{set: payload, to: changed}]
        wires: [after]
      - id: after
        type: junction
      - id: direct
        type: junction
"""


async def test_disabled_node_is_not_created_and_its_messages_are_dropped():
    async with Harness(text=textwrap.dedent(DISABLED)) as h:
        with pytest.raises(KeyError):
            h.node("off-switch")
        await h.send("start", {"payload": 1})
        assert h.payloads("direct") == [1]
        assert h.messages("after") == []


def test_disabled_nodes_are_still_validated():
    spec = load(DISABLED.replace("rules: [{set: payload, to: changed}]", "rules: [{set: payload}]"))
    assert errors(spec) == ["flow.yaml:10:13: error: a set rule needs 'to'"]


# ---- wires --------------------------------------------------------------------------------------------
def test_wire_forms():
    spec = load("""\
        meterflow: 1
        nodes:
          - {id: one, type: junction, wires: a}
          - {id: list, type: junction, wires: [a, b]}
          - {id: per-output, type: router, wires: [[a], [b, c]]}
          - {id: gap, type: router, wires: [null, b]}
          - {id: named, type: router, wires: {low: [c], high: a}}
          - {id: none, type: junction}
          - {id: a, type: junction}
          - {id: b, type: junction}
          - {id: c, type: junction}
    """)
    assert not spec.problems
    w = {n.id: n.wires for n in spec.nodes}
    assert w["one"] == [["a"]]
    assert w["list"] == [["a", "b"]]
    assert w["per-output"] == [["a"], ["b", "c"]]
    assert w["gap"] == [[], ["b"]]
    assert w["named"] == [["a"], ["c"]]
    assert w["none"] == []  # no wires key: no wires at all


def test_named_outputs_follow_the_config():
    spec = load("""\
        meterflow: 1
        nodes:
          - {id: r, type: router, routes: [ok, retry, failed], wires: {failed: [a], retry: a}}
          - {id: a, type: junction}
    """)
    assert not spec.problems and spec.node("r").wires == [[], ["a"], ["a"]]
    spec = load("""\
        meterflow: 1
        nodes:
          - {id: r, type: router, wires: {hihg: [a]}}
          - {id: a, type: junction}
    """)
    assert errors(spec) == ["flow.yaml:3:41: error: no output named 'hihg'; outputs: high, low (did you mean 'high'?)"]


async def test_named_output_wires_route_at_run_time():
    text = """\
        meterflow: 1
        nodes:
          - {id: r, type: router, wires: {low: lo, high: [hi]}}
          - {id: hi, type: junction}
          - {id: lo, type: junction}
    """
    async with Harness(text=textwrap.dedent(text), registry=Reg()) as h:
        await h.send("r", {"topic": "low", "payload": 1})
        await h.send("r", {"topic": "high", "payload": 2})
        assert h.payloads("lo") == [1] and h.payloads("hi") == [2]


def test_wire_to_unknown_id_points_at_the_id_in_each_form():
    spec = load("""\
        meterflow: 1
        nodes:
          - {id: a, type: router, wires: {high: [b, x1]}}
          - {id: b, type: router, wires: [[x2], [a]]}
          - {id: c, type: junction, wires: x3}
    """)
    assert [(p.line, p.col, p.message.split(" (")[0]) for p in spec.problems] == [
        (3, 45, "wire to unknown node 'x1'"), (4, 36, "wire to unknown node 'x2'"), (5, 36, "wire to unknown node 'x3'")]


# ---- top level ----------------------------------------------------------------------------------------
def test_name_defaults_to_file_stem_and_context_dir_is_relative_to_the_file(tmp_path):
    f = write(tmp_path / "sub" / "smt.yaml", "meterflow: 1\ncontext: {store: file, dir: state}\nnodes: []\n")
    spec = load_flow(f, Reg(), env={})
    assert spec.name == "smt"
    assert spec.context == {"store": "file", "dir": str(tmp_path / "sub" / "state"), "flush": 1.0}
    assert load("meterflow: 1\nname: meter-a\n").name == "meter-a"


def test_config_nodes_and_references():
    spec = load("""\
        meterflow: 1
        config:
          - {id: b1, type: test-broker, host: a}
        nodes:
          - {id: p, type: test-publish, broker: b1}
    """)
    assert not spec.problems and spec.node("b1").is_config and not spec.node("p").is_config


# ---- a flow that check passes must load ---------------------------------------------------------------
VALID = """\
    meterflow: 1
    name: valid-example
    nodes:
      - id: fmt
        type: change
        name: format reading
        rules:
          - set: payload
            to: {kwh: 12.5, at: "12:30"}
          - set: topic
            to: smt/reading
        wires: [call]
      - id: call
        type: link-call
        links: [enrich]
        timeout: 5s
        wires: [show]
      - id: enrich
        type: link-in
        wires: [tag]
      - id: tag
        type: change
        rules: [{set: payload.meter, to: "0123"}]
        wires: [back]
      - id: back
        type: link-out
        mode: return
      - id: show
        type: debug
        property: payload
      - id: errors
        type: catch
        scope: [fmt, tag]
        kinds: [parse]
        wires: [show]
"""


async def test_a_flow_that_check_passes_loads_and_runs():
    spec = load(VALID)
    assert spec.problems == []
    async with Harness(text=textwrap.dedent(VALID)) as h:
        await h.send("fmt", {"payload": None})
        assert h.debug == [("show", {"kwh": 12.5, "at": "12:30", "meter": "0123"})]
        assert h.messages("show")[0]["topic"] == "smt/reading"


def test_wires_of_a_node_of_unknown_type_are_still_checked():
    spec = load("meterflow: 1\nnodes:\n  - {id: a, type: nosuch, wires: [shwo]}\n  - {id: show, type: debug}\n")
    assert any("wire to unknown node 'shwo'" in p.message for p in spec.errors)


def test_harness_refuses_a_flow_that_check_rejects():
    with pytest.raises(FlowLoadError, match=r"test-flow.yaml:3:19: error: unknown node type 'chnage'"):
        Harness(text="meterflow: 1\nnodes:\n  - {id: a, type: chnage}\n").load()


# ---- the documented example stays valid -----------------------------------------------------------------
def doc_files() -> dict[str, str]:
    """The ```yaml blocks of docs/flow-format.md that start with '# file: NAME'."""
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# file: "):
            out[first.removeprefix("# file: ").strip()] = block
    return out


def test_documented_example_checks_clean(tmp_path):
    """The complete example in the docs passes check (node types not installed yet are skipped)."""
    trustme = pytest.importorskip("trustme")
    files = doc_files()
    assert set(files) == {"smt-example.yaml", "common.yaml"}
    for name, text in files.items():
        write(tmp_path / name, text)
    cert = trustme.CA().issue_cert("meter.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "privkey.pem"))
    env = {"SMT_ESIID": "10443720001234567", "SMT_METER": "123456789LG",
           "SMT_CERT": str(tmp_path / "fullchain.pem"), "SMT_KEY": str(tmp_path / "privkey.pem")}
    reg = Reg({"creds": lambda key: f"secret-for-{key}"})  # the credential store's scheme, stubbed
    spec = load_flow(tmp_path / "smt-example.yaml", reg, env=env)
    missing = {m.group(1) for p in spec.errors if (m := re.match(r"unknown node type '([^']+)'", p.message))}
    if missing:
        pytest.skip(f"node types not installed yet: {', '.join(sorted(missing))}")
    assert [str(p) for p in spec.problems] == []
    assert len(spec.nodes) == 17  # as the doc's `meterflow check` line says
    body = spec.node("hourly").config["props"][0]["value"]
    assert '"ESIID": "10443720001234567"' in body and "secret-for-smt.user" in body
    assert spec.node("home-mqtt").config["port"] == 1883
    assert spec.node("status").wires == [["reading"], ["log"], ["log"]]
    assert spec.context["store"] == "file" and spec.context["dir"] == str(tmp_path / "state")
