"""switch: every operator, JavaScript loose comparisons, else/check_all, prev, jsonata, parts."""

from __future__ import annotations

import math

import pytest

from meterflow import compare
from meterflow.message import MISSING
from meterflow.nodes.switch import Switch
from meterflow.testing import FlowLoadError


def switch_flow(rules: str, extra: str = "", n: int | None = None) -> str:
    """A switch ``sw`` whose outputs go to junctions o0, o1, ... (one per rule)."""
    count = n if n is not None else rules.count("op:")
    outs = "\n".join(f"  - {{id: o{i}, type: junction}}" for i in range(count))
    wires = ", ".join(f"[o{i}]" for i in range(count))
    return f"""
nodes:
  - id: sw
    type: switch
{extra}    rules:
{rules}
    wires: [{wires}]
{outs}
"""


async def route(h, msg: dict) -> list[int]:
    """Which outputs ``msg`` reached."""
    for box in h.received.values():
        box.clear()
    await h.send("sw", msg)
    return [i for i in range(100) if f"o{i}" in h.received and h.received[f"o{i}"]]


# ---- compare: JavaScript semantics ---------------------------------------------------------------

@pytest.mark.parametrize("a, b, eq", [
    (0, "", True), (0, "0", True), ("", "0", False), (False, "0", True), (False, "", True),
    (None, MISSING, True), (None, 0, False), (MISSING, 0, False), (None, False, False),
    (1, True, True), (2, True, False), ("1", True, True), ("abc", "abc", True),
    (math.nan, math.nan, False), ([1, 2], "1,2", True), ({}, "[object Object]", True),
    (" 12 ", 12, True), ("0x10", 16, True), ("1_0", 10, False), ("inf", math.inf, False),
    ("Infinity", math.inf, True), (5.0, "5", True),
])
def test_loose_equality(a, b, eq):
    assert compare.loose_eq(a, b) is eq
    assert compare.loose_eq(b, a) is eq


def test_objects_are_equal_only_to_themselves():
    x = {"a": 1}
    assert compare.loose_eq(x, x)
    assert not compare.loose_eq(x, {"a": 1})
    assert not compare.loose_eq([1], [1])


@pytest.mark.parametrize("a, b, lt, lte", [
    ("10", 9, False, False), ("10", "9", True, True), (None, 9, True, True), (MISSING, 9, False, False),
    (0, None, False, True), ("", 1, True, True), ("abc", 1, False, False), (True, 2, True, True),
    ("a", "b", True, True), ("b", "b", False, True), ([2], 3, True, True), (math.nan, 1, False, False),
])
def test_loose_ordering(a, b, lt, lte):
    assert compare.lt(a, b) is lt
    assert compare.lte(a, b) is lte
    assert compare.gt(b, a) is lt
    assert compare.gte(b, a) is lte


@pytest.mark.parametrize("v, text", [
    (5.0, "5"), (0.1, "0.1"), (1e21, "1e+21"), (1e20, "100000000000000000000"), (1.5e-7, "1.5e-7"),
    (0.000001, "0.000001"), (-2.5, "-2.5"), (math.nan, "NaN"), (-math.inf, "-Infinity"), (True, "true"),
    (None, "null"), (MISSING, "undefined"), ([1, None, [2, 3]], "1,,2,3"), ({"a": 1}, "[object Object]"),
    (b"hi", "hi"), (123456789012, "123456789012"),
])
def test_js_string(v, text):
    assert compare.js_str(v) == text


def test_js_number():
    assert compare.js_number("") == 0
    assert compare.js_number("  ") == 0
    assert compare.js_number("0012") == 12
    assert compare.js_number(".5") == 0.5
    assert compare.js_number("1e3") == 1000
    assert compare.js_number("0b101") == 5
    assert math.isnan(compare.js_number("-0x10"))
    assert math.isnan(compare.js_number("nan"))
    assert math.isnan(compare.js_number(MISSING))
    assert compare.js_number(None) == 0


# ---- the verified Node-RED routing table ------------------------------------------------------------

async def test_loose_comparisons_route_as_node_red(flow):
    rules = """      - {op: eq, value: "", value_type: str}
      - {op: eq, value: "0", value_type: str}
      - {op: lt, value: 9}
      - {op: else}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 0}) == [0, 1, 2]
        assert await route(h, {"payload": ""}) == [0, 2]
        assert await route(h, {"payload": "0"}) == [1, 2]
        assert await route(h, {"payload": False}) == [0, 1, 2]
        assert await route(h, {"payload": None}) == [2]
        assert await route(h, {"payload": "10"}) == [3]
        assert await route(h, {}) == [3]


async def test_comparison_operators(flow):
    rules = """      - {op: eq, value: 5}
      - {op: neq, value: 5}
      - {op: lt, value: 5}
      - {op: lte, value: 5}
      - {op: gt, value: 5}
      - {op: gte, value: 5}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 5}) == [0, 3, 5]
        assert await route(h, {"payload": "5"}) == [0, 3, 5]
        assert await route(h, {"payload": 4.5}) == [1, 2, 3]
        assert await route(h, {"payload": "6"}) == [1, 4, 5]
        assert await route(h, {"payload": "abc"}) == [1]  # NaN: no ordering holds


async def test_value_without_type_is_a_number_when_it_reads_as_one(flow):
    rules = """      - {op: eq, value: "10"}
      - {op: eq, value: "10", value_type: str}
      - {op: eq, value: ""}
      - {op: eq, value: "abc"}"""
    async with flow(switch_flow(rules)) as h:
        # "10" untyped is the number 10, so the string "10.0" equals it; typed str it does not
        assert await route(h, {"payload": "10.0"}) == [0]
        assert await route(h, {"payload": "10"}) == [0, 1]
        assert await route(h, {"payload": 0}) == [2]  # Node-RED's quirk: "" untyped is 0
        assert await route(h, {"payload": "abc"}) == [3]


async def test_between_either_order_and_strings(flow):
    rules = """      - {op: btwn, value: 10, value2: 1}
      - {op: btwn, value: a, value2: c, value_type: str, value2_type: str}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 1}) == [0]
        assert await route(h, {"payload": "10"}) == [0]
        assert await route(h, {"payload": 11}) == []
        assert await route(h, {"payload": "b"}) == [1]
        assert await route(h, {"payload": "c"}) == [1]
        assert await route(h, {"payload": "d"}) == []


async def test_between_value_and_previous(flow):
    rules = """      - {op: btwn, value: 0, value2_type: prev}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 0}) == [0]  # previous starts as null: 0 >= null
        assert await route(h, {"payload": 5}) == []   # between 0 and the previous 0: no
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 5}) == []   # between 0 and null (0)
        assert await route(h, {"payload": 3}) == [0]  # between 0 and 5
        assert await route(h, {"payload": 7}) == []   # between 0 and 3
        assert await route(h, {"payload": -1}) == []  # between 0 and 7


async def test_between_first_value_then_prev_quirk(flow):
    # Appendix 3: the previous value starts as null, so the first input 0 passes
    rules = """      - {op: btwn, value: 5, value2_type: prev}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 0}) == [0]
        assert await route(h, {"payload": 3}) == [0]   # between 5 and 0
        assert await route(h, {"payload": 6}) == []    # between 5 and 3


async def test_eq_previous_value(flow):
    rules = """      - {op: neq, value_type: prev}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": "on"}) == [0]
        assert await route(h, {"payload": "on"}) == []  # report by exception: only changes pass
        assert await route(h, {"payload": "off"}) == [0]


async def test_contains_and_regex(flow):
    rules = """      - {op: cont, value: ERR}
      - {op: regex, value: "^err(?<code>\\\\d+)"}
      - {op: regex, value: "^err", case_insensitive: true}
      - {op: cont, value: "1,2"}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": "ERR42"}) == [0, 2]
        assert await route(h, {"payload": "err42"}) == [1, 2]
        assert await route(h, {"payload": "errx"}) == [2]
        assert await route(h, {"payload": [1, 2, 3]}) == [3]  # String([1,2,3]) is "1,2,3"


async def test_regex_from_msg_compiled_at_run_time_and_bad_one_reaches_catch(flow):
    text = """
nodes:
  - id: sw
    type: switch
    rules:
      - {op: regex, value: pattern, value_type: msg}
    wires: [[o0]]
  - {id: o0, type: junction}
  - {id: c, type: catch, scope: [sw]}
"""
    async with flow(text) as h:
        await h.send("sw", {"payload": "abc", "pattern": "b+"})
        assert len(h.messages("o0")) == 1
        await h.send("sw", {"payload": "abc", "pattern": "b("})
        assert len(h.messages("o0")) == 1
        (err,) = h.messages("c")
        assert err["error"]["kind"] == "parse"
        assert "regular expression" in err["error"]["message"]


async def test_unary_operators(flow):
    rules = """      - {op: "true"}
      - {op: "false"}
      - {op: "null"}
      - {op: nnull}
      - {op: empty}
      - {op: nempty}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": True}) == [0, 3]
        assert await route(h, {"payload": 1}) == [3]  # only the boolean true is true
        assert await route(h, {"payload": False}) == [1, 3]
        assert await route(h, {"payload": None}) == [2]
        assert await route(h, {}) == [2]
        assert await route(h, {"payload": ""}) == [3, 4]
        assert await route(h, {"payload": []}) == [3, 4]
        assert await route(h, {"payload": {}}) == [3, 4]
        assert await route(h, {"payload": b""}) == [3, 4]
        assert await route(h, {"payload": "x"}) == [3, 5]
        assert await route(h, {"payload": {"a": 1}}) == [3, 5]
        assert await route(h, {"payload": 0}) == [3]  # numbers are neither empty nor not empty


@pytest.mark.parametrize("payload, types", [
    (["a"], ["array"]), (b"x", ["buffer"]), ('{"a":1}', ["json", "string"]), ("abc", ["string"]),
    (5, ["json", "number"]), (math.inf, ["number"]), (math.nan, []), (None, ["json", "null"]),
    (MISSING, ["undefined"]), (True, ["json", "boolean"]), ({"a": 1}, ["object"]), ([5], ["array", "json"]),
])
async def test_istype(flow, payload, types):
    names = ("array", "buffer", "json", "null", "number", "undefined", "string", "boolean", "object")
    rules = "\n".join(f"      - {{op: istype, value: {t}}}" for t in names)
    async with flow(switch_flow(rules)) as h:
        msg = {} if payload is MISSING else {"payload": payload}
        assert [names[i] for i in await route(h, msg)] == types


async def test_has_key(flow):
    rules = """      - {op: hask, value: a}
      - {op: hask, value: "0", value_type: str}
      - {op: hask, value: length, value_type: str}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": {"a": 1}}) == [0]
        assert await route(h, {"payload": {"0": None}}) == [1]
        assert await route(h, {"payload": ["x"]}) == [1, 2]
        assert await route(h, {"payload": "s"}) == [1, 2]
        assert await route(h, {"payload": None}) == []
        assert await route(h, {"payload": 5}) == []


async def test_head_index_and_tail_with_parts(flow):
    rules = """      - {op: head, value: 2}
      - {op: index, value: 1, value2: 2}
      - {op: tail, value: 2}"""
    async with flow(switch_flow(rules)) as h:
        # parts without a count: tail holds the group until the last message tells the count
        for i in range(4):
            parts = {"id": "g", "index": i, **({"count": 4} if i == 3 else {})}
            h.inject("sw", {"payload": i, "parts": parts})
        await h.settle()
        assert h.payloads("o0") == [0, 1]
        assert h.payloads("o1") == [1, 2]
        assert h.payloads("o2") == [2, 3]
        # no parts at all: index is undefined, nothing matches
        assert await route(h, {"payload": 9}) == []


async def test_head_without_tail_is_not_buffered(flow):
    rules = """      - {op: head, value: 1}
      - {op: else}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 0, "parts": {"id": "g", "index": 0}}) == [0]
        assert await route(h, {"payload": 1, "parts": {"id": "g", "index": 1}}) == [1]


async def test_jsonata_rule_and_property(flow):
    rules = """      - {op: jsonata_exp, value: "payload.v > 10"}
      - {op: jsonata_exp, value: "$I = 0"}
      - {op: eq, value: "payload.v * 2", value_type: jsonata}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": {"v": 11}, "parts": {"id": "x", "index": 0}}) == [0, 1]
        assert await route(h, {"payload": {"v": 3}}) == []
    extra = '    property: "payload.a + payload.b"\n    property_type: jsonata\n'
    rules = """      - {op: eq, value: 3}
      - {op: else}"""
    async with flow(switch_flow(rules, extra)) as h:
        assert await route(h, {"payload": {"a": 1, "b": 2}}) == [0]
        assert await route(h, {"payload": {"a": 1, "b": 5}}) == [1]
        # a JSONata runtime error on the property drops the message with a warning (as Node-RED)
        assert await route(h, {"payload": {"a": "x", "b": 5}}) == []
        assert h.errors == []


async def test_check_all_false_stops_at_first_match(flow):
    rules = """      - {op: gt, value: 1}
      - {op: gt, value: 2}
      - {op: else}"""
    async with flow(switch_flow(rules, "    check_all: false\n")) as h:
        assert await route(h, {"payload": 5}) == [0]
        assert await route(h, {"payload": 0}) == [2]
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 5}) == [0, 1]


async def test_else_resets_after_each_else(flow):
    rules = """      - {op: eq, value: 1}
      - {op: else}
      - {op: eq, value: 2}
      - {op: else}"""
    async with flow(switch_flow(rules)) as h:
        assert await route(h, {"payload": 1}) == [0, 3]  # the second else: nothing since the first else
        assert await route(h, {"payload": 2}) == [1, 2]
        # the first else matched, so the second one has a match since the previous else
        assert await route(h, {"payload": 3}) == [1]


async def test_property_from_context_and_nested_paths(flow):
    text = """
nodes:
  - id: sw
    type: switch
    property: flow.mode
    rules:
      - {op: eq, value: auto, output: auto}
      - {op: eq, value: "mode", value_type: global}
      - {op: eq, value: payload.want, value_type: msg}
    wires: {auto: [o0], "1": [o1], "2": [o2]}
  - {id: o0, type: junction}
  - {id: o1, type: junction}
  - {id: o2, type: junction}
"""
    async with flow(text) as h:
        h.flow_context.set("mode", "auto")
        h.global_context.set("mode", "auto")
        assert await route(h, {"payload": {"want": "auto"}}) == [0, 1, 2]
        assert await route(h, {"payload": "no parent"}) == [0, 1]
        h.flow_context.set("mode", "manual")
        assert await route(h, {"payload": {"want": "manual"}}) == [2]


async def test_missing_parent_reads_as_undefined(flow):
    rules = """      - {op: "null"}"""
    async with flow(switch_flow(rules, "    property: payload.a.b\n")) as h:
        assert await route(h, {"payload": {}}) == [0]


async def test_later_outputs_get_copies(flow):
    rules = """      - {op: nnull}
      - {op: nnull}"""
    # the first matching output receives the very object; later ones deep copies
    async with flow(switch_flow(rules)) as h:
        seen = {}
        for k in ("o0", "o1"):
            n = h.node(k)
            inner = n.on_input
            n.on_input = lambda m, k=k, inner=inner: (seen.__setitem__(k, m), inner(m))[1]
        sent = {"payload": {"n": 1}}
        await h.send("sw", sent)
        assert seen["o0"] is sent
        assert seen["o1"] is not sent and seen["o1"]["payload"] is not sent["payload"]


async def test_output_names_and_wires_by_name(flow):
    assert Switch.output_names({"rules": [{"op": "eq", "output": "ready"}, {"op": "else"}]}) == ["ready", "1"]
    text = """
nodes:
  - id: sw
    type: switch
    property: payload.status
    rules:
      - {op: eq, value: COMPLETED, value_type: str, output: ready}
      - {op: eq, value: PENDING, value_type: str, output: pending}
    wires:
      ready: [done]
      pending: [wait]
  - {id: done, type: junction}
  - {id: wait, type: junction}
"""
    async with flow(text) as h:
        await h.send("sw", {"payload": {"status": "PENDING"}})
        await h.send("sw", {"payload": {"status": "COMPLETED"}})
        assert len(h.messages("done")) == 1 and len(h.messages("wait")) == 1


async def test_switch_never_completes(flow):
    text = """
nodes:
  - {id: sw, type: switch, rules: [{op: nnull}], wires: [[o0]]}
  - {id: o0, type: junction}
  - {id: c, type: complete, scope: [sw]}
"""
    async with flow(text) as h:
        await h.send("sw", {"payload": 1})
        assert len(h.messages("o0")) == 1
        assert h.messages("c") == []


@pytest.mark.parametrize("rules, where, words", [
    ("[{op: regex, value: 'a('}]", ("rules", 0, "value"), "regular expression"),
    ("[{op: eq}]", ("rules", 0), "needs 'value'"),
    ("[{op: btwn, value: 1}]", ("rules", 0), "needs 'value2'"),
    ("[{op: istype, value: integer}]", ("rules", 0, "value"), "istype"),
    ("[{op: jsonata_exp, value: 'payload +'}]", ("rules", 0, "value"), "JSONata"),
    ("[{op: eq, value: '{bad', value_type: json}]", ("rules", 0, "value"), "JSON"),
    ("[{op: eq, value: 'a..b', value_type: msg}]", ("rules", 0, "value"), "property expression"),
    ("[{op: eq, value: 1, output: x}, {op: eq, value: 2, output: x}]", ("rules", 1, "output"), "already used"),
    ("[{op: eq, value: a, case_insensitive: true}]", ("rules", 0, "case_insensitive"), "regex"),
])
def test_check_problems(rules, where, words):
    import yaml

    config = {"property": "payload", "property_type": "msg", "check_all": True,
              "rules": [{"case_insensitive": False, **r} for r in yaml.safe_load(rules)]}
    problems = Switch.check(config)
    assert any(path == where and words in text for path, text in problems), problems


async def test_bad_regex_is_reported_at_load_with_its_line(flow):
    text = """
nodes:
  - id: sw
    type: switch
    rules:
      - {op: regex, value: "("}
    wires: [[o0]]
  - {id: o0, type: junction}
"""
    with pytest.raises(FlowLoadError) as info:
        async with flow(text):
            pass
    assert "regular expression" in str(info.value)
    assert "test-flow.yaml:7:" in str(info.value)  # the rule's line (the header line comes first)
