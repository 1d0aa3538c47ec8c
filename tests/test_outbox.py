"""outbox: order, retry with capped backoff + jitter on the engine clock, drop-oldest with a
log line per drop, permanent rejects to catch, batch split, drain at stop, disk spool
replayed by a new engine."""

import json
import logging

import pytest

from meterflow.clock import VirtualClock
from meterflow.errors import ConnectError, HttpError
from meterflow.node import Node
from meterflow.outbox import FIELDS, Outbox, Reject, Retry, Split, drain_time, for_node
from meterflow.schema import Field
from meterflow.testing import Harness, registry_with


class FarSide:
    """A scripted far side: ``down`` -> Retry; records what it received, in order."""

    def __init__(self):
        self.down = False
        self.got: list = []
        self.batches: list[int] = []
        self.script: list = []  # exceptions to raise on the next calls

    async def __call__(self, batch):
        self.batches.append(len(batch))
        if self.script:
            raise self.script.pop(0)
        if self.down:
            raise Retry(ConnectError("far side down"))
        self.got.extend(item.data for item in batch)


def make(clock, far, **kw) -> Outbox:
    box = Outbox("test", far, clock, **kw)
    box.open()
    return box


async def settle(n=5):
    import asyncio

    for _ in range(n):
        await asyncio.sleep(0)


async def test_order_and_counts():
    clock, far = VirtualClock(), FarSide()
    box = make(clock, far)
    for i in range(5):
        box.put(i)
    await settle(20)
    assert far.got == [0, 1, 2, 3, 4]
    assert box.stats() == {"queued": 0, "delivered": 5, "retried": 0, "dropped": 0}


async def test_retry_backoff_is_capped_exponential_with_jitter_on_the_engine_clock(monkeypatch):
    clock, far = VirtualClock(), FarSide()
    monkeypatch.setattr("meterflow.outbox.random.random", lambda: 1.0)  # the full jitter: delay * 0.8
    box = make(clock, far, retry_min=1, retry_max=8, jitter=0.2)
    far.down = True
    box.put("a")
    box.put("b")
    await settle()
    times = []
    start = clock.time()
    for _ in range(6):
        due = clock.next_due()
        times.append(round(due - start, 3))
        await clock.advance(due - clock.time())
        await settle()
    # gaps 0.8, 1.6, 3.2, 6.4, then capped at 8 * 0.8
    gaps = [round(b - a, 3) for a, b in zip([0, *times], times, strict=False)]
    assert gaps == [0.8, 1.6, 3.2, 6.4, 6.4, 6.4]
    assert far.got == [] and box.retried == 7  # one item per attempt (batch_size 1)
    far.down = False
    await clock.advance(10)
    await settle()
    assert far.got == ["a", "b"]  # order kept across the outage
    assert box.stats()["queued"] == 0 and box.dropped == 0


async def test_retry_after_is_honoured_and_kick_retries_at_once():
    clock, far = VirtualClock(), FarSide()
    box = make(clock, far, retry_min=1, retry_max=60)
    far.script = [Retry(HttpError("busy", 503), retry_after=30)]
    box.put("x")
    await settle()
    assert clock.next_due() - clock.time() == pytest.approx(30)
    box.kick()  # e.g. the broker reconnected
    await settle()
    assert far.got == ["x"]


async def test_full_queue_drops_oldest_with_a_log_line_per_drop(caplog):
    clock, far = VirtualClock(), FarSide()
    far.down = True
    box = make(clock, far, limit=3)
    with caplog.at_level(logging.WARNING, logger="meterflow.outbox"):
        for i in range(6):
            box.put(i)
            await settle()
    # item 0 was in flight when the queue filled, so the oldest waiting ones go first
    drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(drops) == 3 and box.dropped == 3
    far.down = False
    await clock.advance(120)
    await settle()
    assert len(far.got) == 3 and far.got[-1] == 5
    assert box.delivered + box.dropped == 6


async def test_reject_drops_and_reports_split_halves():
    clock, far = VirtualClock(), FarSide()
    dropped = []
    box = Outbox("test", far, clock, batch_size=8, on_dropped=lambda item, err: dropped.append((item.data, err.kind)))
    far.script = [Split(), Reject(HttpError("bad point", 400))]
    for i in range(8):
        box.put(i)  # queued before open: one batch of 8
    box.open()
    await settle(30)
    # 8 -> split -> 4 rejected (dropped, reported) -> the other 4 delivered
    assert far.batches[:3] == [8, 4, 4]
    assert dropped == [(0, "http"), (1, "http"), (2, "http"), (3, "http")]
    assert far.got == [4, 5, 6, 7]


async def test_retry_false_reports_transient_errors_at_once():
    clock, far = VirtualClock(), FarSide()
    dropped = []
    box = make(clock, far, retry=False, on_dropped=lambda item, err: dropped.append(err.kind))
    far.down = True
    box.put(1)
    await settle()
    assert dropped == ["connect"] and box.stats()["queued"] == 0


async def test_batch_interval_waits_for_a_full_batch_on_the_clock():
    clock, far = VirtualClock(), FarSide()
    box = make(clock, far, batch_size=3, batch_interval=5)
    box.put(1)
    box.put(2)
    await settle()
    assert far.got == []
    await clock.advance(5)
    await settle()
    assert far.got == [1, 2] and far.batches == [2]
    for i in range(3):
        box.put(i)
    await settle()
    assert far.batches == [2, 3]  # a full batch leaves at once


async def test_drain_delivers_then_reports_what_is_left(caplog):
    clock, far = VirtualClock(), FarSide()
    box = make(clock, far, retry_min=100)
    far.down = True
    box.put("late")
    await settle()
    far.down = False  # back, but the backoff timer (100 s virtual) would not fire during stop
    assert await box.drain(2.0) is True
    assert far.got == ["late"]

    box2 = make(clock, FarSide())
    box2.sink.down = True
    box2.put("lost")
    with caplog.at_level(logging.WARNING, logger="meterflow.outbox"):
        assert await box2.drain(0.3) is False
    assert box2.dropped == 1
    assert any("lost" in r.getMessage() and "shutdown" in r.getMessage() for r in caplog.records)


async def test_spool_replay_skips_acked_and_a_torn_line(tmp_path):
    clock, far = VirtualClock(), FarSide()
    path = tmp_path / "x.jsonl"
    box = make(clock, far, spool=path)
    box.put({"n": 1})
    await settle()
    far.down = True
    box.put({"n": 2})
    box.put({"n": 3})
    await settle()
    assert await box.drain(0.2) is False
    with open(path, "a") as fh:
        fh.write('{"seq": 99, "da')  # a crash in the middle of a write
    far2 = FarSide()
    box2 = Outbox("test", far2, clock, spool=path)
    assert box2.open() == 2
    await settle(20)
    assert far2.got == [{"n": 2}, {"n": 3}]
    await box2.drain(1)
    assert Outbox("test", far2, clock, spool=path).open() == 0


# ---- through the engine ------------------------------------------------------------------------
class Remote:
    down = True
    got: list = []


class SpoolOut(Node):
    """A minimal outbox-backed output node, as a plugin author would write one."""

    type = "test-spool-out"
    summary = "test output"
    outputs = 0
    auto_done = False
    schema = {"tag": Field("str", "label"), **FIELDS}

    @classmethod
    def output_names(cls, config):
        return []

    def setup(self):
        self.outbox = for_node(self, self._sink, on_delivered=lambda item: item.msg and self.done(item.msg))

    async def _sink(self, batch):
        if Remote.down:
            raise Retry(ConnectError("remote down"))
        Remote.got.extend(item.data for item in batch)

    async def start(self):
        self.outbox.open()

    async def stop(self):
        await self.outbox.drain(drain_time(self))

    def on_input(self, msg):
        self.outbox.put(msg["payload"], msg)


FLOW = """meterflow: 1
nodes:
  - id: out
    type: test-spool-out
    spool: spool
    drain: 0.2s
    retry_min: 5s
  - id: done
    type: complete
    scope: [out]
    wires: [seen]
  - id: seen
    type: debug
    active: false
"""


async def test_spool_survives_an_engine_restart(tmp_path):
    reg = registry_with(SpoolOut)
    Remote.down, Remote.got = True, []
    file = str(tmp_path / "flow.yaml")
    async with Harness(text=FLOW, file=file, registry=reg) as h:
        for i in range(3):
            await h.send("out", {"payload": {"reading": i}})
        await h.advance(30)
        assert h.node("out").outbox.stats()["queued"] == 3
    spool = tmp_path / "spool" / "out.jsonl"
    assert [json.loads(x)["data"] for x in spool.read_text().splitlines()] == [{"reading": i} for i in range(3)]

    Remote.down = False
    async with Harness(text=FLOW, file=file, registry=reg) as h:
        await h.settle()
        assert Remote.got == [{"reading": 0}, {"reading": 1}, {"reading": 2}]
        await h.send("out", {"payload": {"reading": 3}})
        assert Remote.got[-1] == {"reading": 3}
        assert h.payloads("seen") == [{"reading": 3}]  # complete fires when delivered
    assert spool.read_text() == ""


async def test_items_put_before_open_follow_the_replayed_ones(tmp_path):
    clock, far = VirtualClock(), FarSide()
    path = tmp_path / "x.jsonl"
    first = make(clock, far, spool=path)
    far.down = True
    first.put("old")
    await settle()
    await first.drain(0.1)
    far.down = False
    box = Outbox("test", far, clock, spool=path)
    box.put("new")  # e.g. a message that arrived before the node started
    assert box.open() == 1
    await settle(20)
    assert far.got == ["old", "new"]
