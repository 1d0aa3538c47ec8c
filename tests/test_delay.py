"""delay: fixed, msg.delay, random, rate queue/drop, per topic, reset, flush, done, shutdown."""

import logging

import pytest


def flow_text(delay_fields: str, extra: str = "") -> str:
    return f"""nodes:
  - id: d
    type: delay
{delay_fields}
    wires: [out]
  - id: out
    type: debug
    active: false
  - id: c
    type: complete
    scope: [d]
    wires: [completed]
  - id: completed
    type: debug
    active: false
{extra}"""


async def test_fixed_three_minutes(flow):
    async with flow(flow_text("    delay: 3m")) as h:
        seen = h.watch("out")
        sent = h.inject("d", {"payload": {"n": 1}, "topic": "t"})
        await h.advance(10)
        h.inject("d", {"payload": 2})
        await h.advance(169.999)
        assert seen == [] and h.messages("completed") == []
        await h.advance(0.001)
        assert seen == [(180.0, {"n": 1})]
        [m] = h.messages("out")
        assert m == sent  # the message itself, untouched
        [c] = h.messages("completed")  # done when it left, not when it arrived
        assert c["payload"] == {"n": 1} and c["complete"]["source"]["id"] == "d"
        await h.advance(10)
        assert seen == [(180.0, {"n": 1}), (190.0, 2)]
        assert len(h.messages("completed")) == 2


async def test_msg_delay_in_ms(flow):
    async with flow(flow_text("    from_msg: true\n    delay: 5s")) as h:
        seen = h.watch("out")
        h.inject("d", {"payload": "a", "delay": 1500})
        h.inject("d", {"payload": "b", "delay": "250"})  # parseFloat of text
        h.inject("d", {"payload": "c", "delay": "soon"})  # not a number: the configured 5 s
        h.inject("d", {"payload": "d", "delay": -40})  # negative: no wait
        h.inject("d", {"payload": "e"})
        await h.advance(10)
        assert seen == [(0.0, "d"), (0.25, "b"), (1.5, "a"), (5.0, "c"), (5.0, "e")]


async def test_random_within_bounds(flow, monkeypatch):
    import meterflow.nodes.delay as delay_mod

    draws = iter([0.0, 0.5, 0.999999])
    monkeypatch.setattr(delay_mod.random, "random", lambda: next(draws))
    async with flow(flow_text("    random: true\n    min: 2s\n    max: 6s")) as h:
        seen = h.watch("out")
        for p in ("lo", "mid", "hi"):
            h.inject("d", {"payload": p})
        await h.advance(10)
        assert seen == [(2.0, "lo"), (4.0, "mid"), (5.999996, "hi")]


async def test_random_real_draws_stay_in_bounds(flow):
    async with flow(flow_text("    random: true\n    min: 1s\n    max: 2s")) as h:
        seen = h.watch("out")
        for i in range(40):
            h.inject("d", {"payload": i})
        await h.advance(3)
        times = [t for t, _ in seen]
        assert len(times) == 40 and all(1.0 <= t <= 2.0 for t in times) and len(set(times)) > 1


async def test_rate_queue_spacing_and_clones(flow):
    async with flow(flow_text("    mode: rate\n    rate: 2\n    per: 1m")) as h:
        seen = h.watch("out")
        originals = [h.inject("d", {"payload": i}) for i in range(4)]
        await h.settle()
        for m in originals:
            m["payload"] = "changed"  # queued messages are copies taken on arrival
        await h.advance(200)
        assert seen == [(0.0, 0), (30.0, 1), (60.0, 2), (90.0, 3)]
        assert len(h.messages("completed")) == 4
        assert h.messages("out")[0] is not originals[0]
        # the queue ran empty: the next message passes at once, then spacing resumes
        h.inject("d", {"payload": "a"})
        h.inject("d", {"payload": "b"})
        await h.advance(30)
        assert seen[4:] == [(200.0, "a"), (230.0, "b")]


async def test_rate_drop(flow):
    async with flow(flow_text("    mode: rate\n    rate: 1\n    per: 1s\n    drop: true")) as h:
        seen = h.watch("out")
        for i in range(3):
            h.inject("d", {"payload": i})
        await h.advance(0.5)
        h.inject("d", {"payload": "early"})
        await h.advance(0.5)
        h.inject("d", {"payload": "on time"})
        await h.advance(5)
        assert seen == [(0.0, 0), (1.0, "on time")]
        assert len(h.messages("completed")) == 5  # dropped messages are done too


async def test_rate_drop_to_second_output(flow):
    text = """nodes:
  - id: d
    type: delay
    mode: rate
    per: 10s
    drop: true
    drop_output: true
    wires: [[out], [dropped]]
  - id: out
    type: debug
    active: false
  - id: dropped
    type: debug
    active: false
"""
    async with flow(text) as h:
        for i in range(3):
            h.inject("d", {"payload": i})
        await h.advance(1)
        assert h.payloads("out") == [0] and h.payloads("dropped") == [1, 2]


async def test_per_topic_queue_keeps_latest_and_ticks_from_start(flow):
    async with flow(flow_text("    mode: rate\n    per: 1s\n    per_topic: queue")) as h:
        seen = h.watch("out")
        await h.advance(0.25)
        h.inject("d", {"topic": "a", "payload": 1})
        h.inject("d", {"topic": "b", "payload": 1})
        h.inject("d", {"topic": "a", "payload": 2})  # replaces a:1 in place
        h.inject("d", {"payload": "no topic"})
        await h.advance(5)
        assert seen == [(1.0, 2), (2.0, 1), (3.0, "no topic")]
        assert [m["topic"] for m in h.messages("out")] == ["a", "b", "_none_"]
        assert len(h.messages("completed")) == 4  # the replaced message is done too
        assert h.clock.next_due() is None  # idle: no ticking while empty


async def test_per_topic_timed_sends_all_each_interval(flow):
    async with flow(flow_text("    mode: rate\n    per: 2s\n    per_topic: timed")) as h:
        seen = h.watch("out")
        await h.advance(3)
        for t, p in (("a", 1), ("b", 1), ("a", 2)):
            h.inject("d", {"topic": t, "payload": p})
        await h.advance(0.5)
        h.inject("d", {"topic": "c", "payload": 1})
        await h.advance(3)
        assert seen == [(4.0, 2), (4.0, 1), (4.0, 1)]
        assert [m["topic"] for m in h.messages("out")] == ["a", "b", "c"]


async def test_reset_drops_everything_and_itself(flow):
    async with flow(flow_text("    delay: 1m")) as h:
        seen = h.watch("out")
        for i in range(3):
            h.inject("d", {"payload": i})
        await h.advance(5)
        h.inject("d", {"payload": "with reset", "reset": True})
        await h.advance(600)
        assert seen == []
        # complete fires for the three cleared messages and for the reset message
        assert [m["payload"] for m in h.messages("completed")] == [0, 1, 2, "with reset"]
        h.inject("d", {"payload": "after"})
        await h.advance(60)
        assert seen == [(665.0, "after")]


async def test_flush_all_and_flush_n(flow):
    async with flow(flow_text("    delay: 1m")) as h:
        seen = h.watch("out")
        for i in range(4):
            h.inject("d", {"payload": i})
        await h.advance(1)
        h.inject("d", {"flush": 2})  # control only: not itself sent
        await h.settle()
        assert seen == [(1.0, 0), (1.0, 1)]
        h.inject("d", {"payload": "own", "flush": True})  # released by its own flush, flag kept
        await h.settle()
        assert seen[2:] == [(1.0, 2), (1.0, 3), (1.0, "own")]
        assert h.messages("out")[-1]["flush"] is True
        await h.advance(120)
        assert len(seen) == 5  # nothing left behind on a timer
        assert len(h.messages("completed")) == 6  # five sent + the flush-only message


async def test_rate_flush_and_reset(flow):
    async with flow(flow_text("    mode: rate\n    per: 10s")) as h:
        seen = h.watch("out")
        for i in range(4):
            h.inject("d", {"payload": i})
        await h.advance(1)
        h.inject("d", {"flush": 2})
        await h.advance(1)
        assert seen == [(0.0, 0), (1.0, 1), (1.0, 2)]
        assert all("flush" not in m for m in h.messages("out"))
        await h.advance(9.5)  # the interval restarted at the flush
        assert seen[3:] == [(11.0, 3)]
        h.inject("d", {"payload": "q1"})
        h.inject("d", {"payload": "q2"})
        await h.settle()
        h.inject("d", {"reset": True})
        await h.advance(30)
        assert seen[4:] == []  # q1, q2 were waiting behind the interval and were cleared
        h.inject("d", {"payload": "fresh"})  # reset forgot the interval: passes at once
        await h.settle()
        assert seen[4:] == [(41.5, "fresh")]


async def test_stop_releases_held_messages_and_logs(flow, caplog):
    h = flow(flow_text("    delay: 3m"))
    await h.start()
    seen = h.watch("out")
    h.inject("d", {"payload": 1})
    h.inject("d", {"payload": 2})
    await h.advance(60)
    with caplog.at_level(logging.WARNING):
        await h.stop()
    assert seen == [(60.0, 1), (60.0, 2)]
    assert any("releasing 2 held message(s)" in r.getMessage() for r in caplog.records)
    assert h.clock.next_due() is None


@pytest.mark.parametrize(("fields", "message"), [
    ("    random: true\n    min: 5s\n    max: 1s", "'min' is longer than 'max'"),
    ("    mode: rate\n    per_topic: latest", "per_topic is false, true, 'queue' or 'timed'"),
    ("    delay: soon", "invalid duration 'soon'"),
])
def test_check(fields, message):
    from meterflow.flowfile import load_flow

    spec = load_flow("f.yaml", text="meterflow: 1\n" + flow_text(fields))
    assert spec.errors and message in spec.errors[0].message
    assert spec.errors[0].line in (5, 6, 7)
