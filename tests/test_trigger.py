"""trigger: first now, second later; extend (latest message), block, reset, per topic, loop."""

import pytest


def text(fields: str, wires: str = "[out]") -> str:
    return f"""nodes:
  - id: t
    type: trigger
{fields}
    wires: {wires}
  - id: out
    type: debug
    active: false
  - id: out2
    type: debug
    active: false
"""


async def test_defaults_send_1_then_0_after_250ms(flow):
    async with flow(text("    per_topic: false")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": "x", "topic": "door"})
        await h.advance(0.249)
        assert seen == [(0.0, "1")]
        await h.advance(0.001)
        assert seen == [(0.0, "1"), (0.25, "0")]
        assert [m["topic"] for m in h.messages("out")] == ["door", "door"]


async def test_basic_ignores_messages_while_running(flow):
    async with flow(text('    first: "on"\n    second: "off"\n    duration: 5m')) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": 1})
        await h.advance(60)
        h.inject("t", {"payload": 2})  # running, not extending: ignored
        await h.advance(240)
        assert seen == [(0.0, "on"), (300.0, "off")]
        h.inject("t", {"payload": 3})  # finished: a new trigger
        await h.advance(300)
        assert seen[2:] == [(300.0, "on"), (600.0, "off")]


async def test_typed_values_and_payload_types(flow):
    fields = """    first_type: payload
    second: '{"state": "idle"}'
    second_type: json
    duration: 2s"""
    async with flow(text(fields)) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": {"kw": 3}})
        await h.advance(2)
        assert seen == [(0.0, {"kw": 3}), (2.0, {"state": "idle"})]


async def test_extend_restarts_and_second_is_built_from_latest(flow):
    fields = """    first: start
    second: stop
    duration: 10s
    extend: true"""
    async with flow(text(fields)) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": 1, "topic": "a", "n": 1})
        await h.advance(6)
        h.inject("t", {"payload": 2, "topic": "b", "n": 2})
        await h.advance(6)
        h.inject("t", {"payload": 3, "topic": "c", "n": 3})
        await h.advance(9.999)
        assert seen == [(0.0, "start")]
        await h.advance(0.001)
        assert seen == [(0.0, "start"), (22.0, "stop")]
        last = h.messages("out")[-1]
        assert last["n"] == 3 and last["topic"] == "c"  # Node-RED: the latest message


async def test_second_latest_and_payload(flow):
    async with flow(text("    first: go\n    second_type: latest\n    duration: 5s")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": "a"})
        await h.advance(1)
        h.inject("t", {"payload": "b"})
        await h.advance(5)
        assert seen == [(0.0, "go"), (5.0, "b")]
    async with flow(text("    first: go\n    second_type: payload\n    duration: 5s")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": "a"})
        await h.advance(1)
        h.inject("t", {"payload": "b"})
        await h.advance(5)
        assert seen == [(0.0, "go"), (5.0, "a")]


async def test_block_until_reset(flow):
    fields = """    first_type: payload
    block: true
    reset_value: recovered"""
    async with flow(text(fields)) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": "down"})
        for i in range(3):
            await h.advance(3600)
            h.inject("t", {"payload": f"still down {i}"})
        await h.advance(1)
        assert seen == [(0.0, "down")]
        h.inject("t", {"payload": "recovered"})  # the reset value: resets, is not sent
        await h.advance(1)
        h.inject("t", {"payload": "down again"})
        await h.advance(1)
        assert seen == [(0.0, "down"), (10802.0, "down again")]
        assert h.clock.next_due() is None  # blocking holds no timer


async def test_reset_by_msg_reset_cancels_second(flow):
    async with flow(text("    duration: 10s")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": 1})
        await h.advance(5)
        h.inject("t", {"reset": True})
        await h.advance(20)
        assert seen == [(0.0, "1")]
        h.inject("t", {"payload": 2})
        await h.advance(10)
        assert seen == [(0.0, "1"), (25.0, "1"), (35.0, "0")]


async def test_numeric_reset_value_compares_as_text(flow):
    async with flow(text("    block: true\n    reset_value: 0")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": 5})
        h.inject("t", {"payload": 0})
        h.inject("t", {"payload": 7})
        await h.settle()
        assert seen == [(0.0, "1"), (0.0, "1")]


async def test_per_topic(flow):
    fields = """    first_type: payload
    second: cleared
    duration: 10s
    per_topic: true"""
    async with flow(text(fields)) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": "a1", "topic": "a"})
        await h.advance(2)
        h.inject("t", {"payload": "b1", "topic": "b"})
        h.inject("t", {"payload": "a2", "topic": "a"})  # a is running: ignored
        await h.advance(1)
        h.inject("t", {"topic": "b", "reset": True})  # resets b only
        await h.advance(20)
        assert seen == [(0.0, "a1"), (2.0, "b1"), (10.0, "cleared")]
        assert h.messages("out")[-1]["topic"] == "a"


async def test_second_output(flow):
    async with flow(text("    second_output: true\n    duration: 1s", wires="[[out], [out2]]")) as h:
        h.inject("t", {"payload": 1})
        await h.advance(1)
        assert h.payloads("out") == ["1"] and h.payloads("out2") == ["0"]


async def test_loop_until_reset(flow):
    async with flow(text("    first: ping\n    loop: true\n    duration: 30s")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": None})
        await h.advance(95)
        h.inject("t", {"reset": True})
        await h.advance(300)
        assert seen == [(0.0, "ping"), (30.0, "ping"), (60.0, "ping"), (90.0, "ping")]
        assert h.clock.next_due() is None


async def test_delay_from_msg(flow):
    async with flow(text("    delay_from_msg: true\n    duration: 10s")) as h:
        seen = h.watch("out")
        h.inject("t", {"payload": 1, "delay": 1500})
        await h.advance(2)
        assert seen == [(0.0, "1"), (1.5, "0")]


async def test_stop_cancels(flow):
    h = flow(text("    duration: 1h"))
    await h.start()
    h.inject("t", {"payload": 1})
    await h.advance(1)
    await h.stop()
    assert h.clock.next_due() is None


@pytest.mark.parametrize(("fields", "message"), [
    ("    loop: true\n    block: true", "choose either 'loop' or 'block'"),
    ("    second: '{bad'\n    second_type: json", "invalid JSON"),
    ("    first_type: payloads", "did you mean 'payload'"),
])
def test_check(fields, message):
    from meterflow.flowfile import load_flow

    spec = load_flow("f.yaml", text="meterflow: 1\n" + text(fields))
    assert spec.errors and message in spec.errors[0].message, spec.errors
