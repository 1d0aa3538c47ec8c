"""inject: once/once_delay, repeat, cron (5/6/7 fields, tz), typed props in order, errors, check."""

import time
from datetime import UTC, datetime

import pytest

from meterflow.flowfile import load_flow

START = datetime(2024, 3, 1, 10, 20, 30, tzinfo=UTC).timestamp()


def at(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def sink(extra: str = "") -> str:
    return f"""
  - id: out
    type: debug
    active: false
{extra}"""


async def test_once_default_delay_then_nothing(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: hello
    topic: greet
    once: true
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        await h.advance(0.099)
        assert h.messages("out") == []
        await h.advance(0.001)
        [m] = h.messages("out")
        assert m["payload"] == "hello" and m["topic"] == "greet" and "_msgid" in m
        await h.advance(3600)
        assert len(h.messages("out")) == 1


async def test_once_delay_then_repeat(flow):
    text = """nodes:
  - id: i
    type: inject
    once: true
    once_delay: 2s
    repeat: 10m
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        await h.advance(2 + 1800 + 1)
        times = [m["payload"] for m in h.messages("out")]
        # default payload: the (virtual) time in epoch ms; first repeat at once_delay + repeat
        base = int(START * 1000)
        assert times == [base + 2000, base + 602_000, base + 1_202_000, base + 1_802_000]


async def test_repeat_without_once(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: 1
    repeat: 30
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        await h.advance(29.9)
        assert h.payloads("out") == []
        await h.advance(60.1)
        assert h.payloads("out") == [1, 1, 1]


@pytest.mark.parametrize("expr", ["0 55 * * * *", "0 55 * * * * *", "55 * * * *"])
async def test_hourly_cron_over_three_hours_fast(flow, expr):
    text = f"""nodes:
  - id: i
    type: inject
    cron: "{expr}"
    tz: UTC
    wires: [out]
""" + sink()
    t = time.perf_counter()
    async with flow(text, start_time=START) as h:
        await h.advance(3 * 3600)
    assert time.perf_counter() - t < 0.5
    assert [p / 1000 for p in h.payloads("out")] == [at(2024, 3, 1, hh, 55) for hh in (10, 11, 12)]


async def test_seconds_cron_and_one_timer_at_a_time(flow):
    text = """nodes:
  - id: i
    type: inject
    cron: "*/20 * * * * *"
    tz: UTC
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        assert h.clock.next_due() == START + 10  # 10:20:40
        live = [t for _, _, t in h.clock._heap if not t.cancelled]
        assert len(live) == 1
        await h.advance(60)
        assert [p / 1000 for p in h.payloads("out")] == [START + 10, START + 30, START + 50]


async def test_cron_in_a_time_zone(flow):
    text = """nodes:
  - id: i
    type: inject
    cron: "0 8 * * *"
    tz: America/Chicago
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        await h.advance(2 * 86400)
        # 08:00 CST is 14:00 UTC
        assert [p / 1000 for p in h.payloads("out")] == [at(2024, 3, 1, 14), at(2024, 3, 2, 14)]


async def test_repeat_beats_cron(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: x
    repeat: 1h
    cron: "0 * * * * *"
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        await h.advance(7200)
        assert h.payloads("out") == ["x", "x"]


async def test_props_typed_in_order(flow, monkeypatch):
    monkeypatch.setenv("METER_FOR_TEST", "M-17")
    text = """nodes:
  - id: i
    type: inject
    props:
      - {property: x, value: "10", type: num}
      - {property: y, value: "x + 2", type: jsonata}
      - {property: payload.on, value: "TRUE", type: bool}
      - {property: payload.list, value: '[1, {"a": 2}]', type: json}
      - {property: payload.struct, value: {b: [3]}}
      - {property: meter, value: METER_FOR_TEST, type: env}
      - {property: copy, value: "payload.list[1].a", type: msg}
      - {property: site, value: site, type: flow}
      - {property: when, type: date}
      - {property: topic, value: 42, type: str}
    wires: [out]
""" + sink()
    async with flow(text, start_time=START) as h:
        h.flow_context.set("site", "north")
        await h.trigger("i")
        await h.trigger("i")
        first, second = h.messages("out")
        assert {k: v for k, v in first.items() if k != "_msgid"} == {
            "x": 10, "y": 12, "payload": {"on": True, "list": [1, {"a": 2}], "struct": {"b": [3]}},
            "meter": "M-17", "copy": 2, "site": "north", "when": int(START * 1000), "topic": "42"}
        assert second["_msgid"] != first["_msgid"]
        # each message gets its own copy of structured values
        node = h.node("i")
        a, _ = node.build()
        a["payload"]["struct"]["b"].append(4)
        b, _ = node.build()
        assert b["payload"]["struct"] == {"b": [3]}


async def test_input_message_fires_and_complete_sees_it(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: p
    wires: [out]
  - id: c
    type: complete
    scope: [i]
    wires: [done]
  - id: done
    type: debug
    active: false
""" + sink()
    async with flow(text) as h:
        await h.send("i", {"payload": "ignored"})
        assert h.payloads("out") == ["p"]
        [m] = h.messages("done")
        assert m["payload"] == "p" and m["complete"]["source"]["id"] == "i"


async def test_evaluation_error_is_catchable_and_nothing_is_sent(flow):
    text = """nodes:
  - id: i
    type: inject
    props:
      - {property: a, value: 1, type: num}
      - {property: b, value: "$number('x')", type: jsonata}
    wires: [out]
  - id: catch
    type: catch
    wires: [caught]
  - id: caught
    type: debug
    active: false
""" + sink()
    async with flow(text) as h:
        await h.trigger("i")
        assert h.messages("out") == []
        [m] = h.messages("caught")
        assert m["a"] == 1 and "b" not in m  # the message as built so far
        assert m["error"]["source"]["id"] == "i" and m["error"]["kind"] == "parse"
        assert "JSONata" in m["error"]["message"]


async def test_uncaught_evaluation_error_is_logged(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: "$number('x')"
    payload_type: jsonata
    wires: [out]
""" + sink()
    async with flow(text) as h:
        await h.trigger("i")
        assert h.messages("out") == []
        [(node_id, text_, kind)] = h.errors
        assert node_id == "i" and kind == "parse" and "JSONata" in text_


async def test_missing_context_value_leaves_property_unset(flow):
    text = """nodes:
  - id: i
    type: inject
    payload: nothing_here
    payload_type: global
    topic: t
    wires: [out]
""" + sink()
    async with flow(text) as h:
        await h.trigger("i")
        [m] = h.messages("out")
        assert "payload" not in m and m["topic"] == "t"
        assert h.errors == []


async def test_stop_cancels_timers(flow):
    text = """nodes:
  - id: i
    type: inject
    repeat: 1
    wires: [out]
""" + sink()
    h = flow(text)
    await h.start()
    await h.advance(2)
    await h.stop()
    assert h.clock.next_due() is None
    await h.advance(10)
    assert len(h.messages("out")) == 2


BAD = """meterflow: 1
nodes:
  - id: ok
    type: inject
    cron: "0 55 * * * *"
  - id: bad
    type: inject
    cron: "0 61 * * * *"
    tz: Mars/Base
    props:
      - property: a
        value: "{oops"
        type: json
      - property: b
        value: "$sum("
        type: jsonata
  - id: shorthand
    type: inject
    props: [{property: payload}]
    payload: "{x"
    payload_type: json
"""


def test_check_reports_each_problem_at_its_line():
    spec = load_flow("f.yaml", text=BAD)
    got = [(p.line, p.message) for p in spec.errors]
    assert got[0][0] == 8 and "field 2 of 6 (minute) '61': 61 is out of range 0-59" in got[0][1]
    assert got[1][0] == 9 and "unknown time zone 'Mars/Base'" in got[1][1]
    assert got[2][0] == 12 and "invalid JSON" in got[2][1]
    assert got[3][0] == 15 and "JSONata" in got[3][1]
    assert got[4][0] == 20 and "invalid JSON" in got[4][1]  # at the shorthand field
    assert len(got) == 5


async def test_bare_payload_and_topic_props_take_the_shorthand(flow):
    # the shape of a Node-RED export: props name payload/topic, the values live beside them
    text = """nodes:
  - id: i
    type: inject
    props: [{property: payload}, {property: topic, type: str}]
    payload: "5"
    payload_type: num
    topic: meter
    wires: [out]
""" + sink()
    async with flow(text) as h:
        await h.trigger("i")
        [m] = h.messages("out")
        assert m["payload"] == 5 and m["topic"] == "meter"
