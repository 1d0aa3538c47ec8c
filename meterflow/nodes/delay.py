"""delay: hold each message for a while, or limit the rate messages pass at.

::

    - id: wait-for-smt
      type: delay
      delay: 3m                 # every message waits 3 minutes (mode: delay, the default)
      wires: [retry]

    - id: per-msg
      type: delay
      from_msg: true            # msg.delay (milliseconds) overrides 'delay' when numeric
      delay: 10s

    - id: jitter
      type: delay
      random: true              # wait a random time between min and max
      min: 1s
      max: 5s

    - id: throttle
      type: delay
      mode: rate
      rate: 2                   # 2 messages ...
      per: 1m                   # ... per minute: one every 30 s
      drop: false               # false: queue the extra ones (default); true: drop them
      per_topic: false          # queue | timed: keep only the latest message per msg.topic
      drop_output: false        # true: dropped / replaced messages leave on a 2nd output

Modes follow Node-RED's delay node:

* **delay** — every message is held and then sent, independently of the others.
* **rate**, queueing — the first message passes at once; later ones wait in a queue that
  releases one every ``per / rate``; when the queue runs empty the next message passes at
  once again.  Queued (and passed) messages are copies taken on arrival.  With
  ``rate_from_msg`` a numeric ``msg.rate`` (ms between messages) changes the spacing.
* **rate**, ``drop: true`` — a message passes if ``per / rate`` has gone by since the last
  one that passed; otherwise it is dropped (counted in the status, or sent to output 2).
* **rate**, ``per_topic: queue`` — one slot per ``msg.topic`` (a missing topic is set to
  ``"_none_"``); a newer message replaces the queued one of its topic in place; every
  interval, timed from start, releases the oldest slot.  ``per_topic: timed`` releases all
  slots every interval.

Control properties: ``msg.reset`` drops everything pending and the reset message itself
(complete nodes still fire for each, as Node-RED); ``msg.flush`` (true, or a number N)
releases all (or the first N) pending messages now.  A message with both is queued,
flushed, then the rest is reset.  A message made of control properties only is never sent.

Shutdown: Node-RED discards what a delay node holds when it stops.  meterflow does not
lose data silently: after the sources stop, the engine's drain phase calls ``flush``,
which releases everything still held **immediately** (ignoring the remaining wait) and
logs how many; the engine delivers them before any node stops.  Messages arriving after
that pass straight through, up to ``DRAIN_PASSES`` of them, so a retry loop through a
delay cannot spin during shutdown; beyond that they are dropped with a warning.  This node calls ``done`` itself (``auto_done = False``):
when a message leaves, or when a reset or a per-topic replacement drops it.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from typing import Any

from ..clock import Timer
from ..message import clone
from ..node import Node
from ..schema import Field, parse_duration

CONTROL = frozenset(("_msgid", "flush", "reset"))
_FLOAT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_float(value: Any) -> float | None:
    """JavaScript's ``parseFloat``: the leading number of a string; None for NaN."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    m = _FLOAT.match(str(value))
    return float(m.group(0)) if m else None


def _flush_count(value: Any, available: int) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(0, min(available, math.floor(value)))
    return available


class Delay(Node):
    type = "delay"
    summary = "Delay each message, or limit the rate messages pass at (queue, drop or latest per topic)"
    auto_done = False
    schema = {
        "mode": Field("str", "delay: hold each message; rate: limit the rate", choices=("delay", "rate"),
                      default="delay"),
        "delay": Field("duration", "how long each message waits (mode delay)", default=5.0),
        "from_msg": Field("bool", "msg.delay in milliseconds overrides 'delay' when numeric", default=False),
        "random": Field("bool", "wait a random time between 'min' and 'max' instead", default=False),
        "min": Field("duration", "shortest random wait", default=1.0),
        "max": Field("duration", "longest random wait", default=5.0),
        "rate": Field("number", "messages per 'per' (mode rate)", default=1, minimum=0.000001),
        "per": Field("duration", "the period 'rate' counts in", default=1.0),
        "drop": Field("bool", "drop messages over the rate instead of queueing them", default=False),
        "per_topic": Field("bool|str", "queue or timed: keep the latest message per msg.topic "
                           "(queue releases one topic per interval, timed all of them)", default=False),
        "drop_output": Field("bool", "send dropped or replaced messages to a second output", default=False),
        "rate_from_msg": Field("bool", "a numeric msg.rate (ms between messages) changes the rate", default=False),
        "on_shutdown": Field("str", "release: pass held messages on at shutdown (nothing lost); drop: discard them,"
                                    " counted and logged — for the waits of poll/retry loops whose state is"
                                    " persisted, so a shutdown does not fire a burst of requests",
                             choices=("release", "drop"), default="release"),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return ["0", "1"] if config.get("drop_output") else ["0"]

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list[tuple[tuple, str]] = []
        pt = config.get("per_topic")
        if isinstance(pt, str) and pt not in ("queue", "timed"):
            problems.append((("per_topic",), f"per_topic is false, true, 'queue' or 'timed', not {pt!r}"))
        if config.get("mode") == "delay":
            if config.get("random") and config.get("from_msg"):
                problems.append((("random",), "choose either 'random' or 'from_msg'"))
            if config.get("random") and parse_duration(config["min"]) > parse_duration(config["max"]):
                problems.append((("min",), "'min' is longer than 'max'"))
        if config.get("mode") == "rate":
            if parse_duration(config["per"]) <= 0:
                problems.append((("per",), "'per' must be longer than 0"))
            if pt and config.get("drop"):
                problems.append((("drop",), "per_topic modes keep the latest message per topic; 'drop' does not apply"))
        return problems

    def setup(self) -> None:
        c = self.config
        pt = c.get("per_topic")
        if c["mode"] == "delay":
            self._kind = "random" if c["random"] else "delayv" if c["from_msg"] else "delay"
        elif pt:
            self._kind = "timed" if pt == "timed" else "queue"
        else:
            self._kind = "drop" if c["drop"] else "rate"
        self._delay = parse_duration(c["delay"])
        self._min, self._max = parse_duration(c["min"]), parse_duration(c["max"])
        self._period0 = parse_duration(c["per"]) / float(c["rate"])
        self._period = self._period0
        self._pending: dict[int, tuple[Timer, dict]] = {}  # delay modes, in arrival order
        self._seq = 0
        self._queue: deque[dict] = deque()  # rate mode (copies)
        self._slots: dict[Any, dict] = {}  # per-topic modes: topic -> latest msg, oldest slot first
        self._timer: Timer | None = None  # rate / per-topic interval; None: idle
        self._last: float | None = None  # drop mode: when the last message passed
        self._t0 = 0.0  # per-topic modes tick from start
        self._dropped = 0
        self._stopped = False
        self._drain_passes = 0

    async def start(self) -> None:
        self._t0 = self.clock.time()

    # ---- input ----------------------------------------------------------------------------
    def on_input(self, msg: dict) -> None:
        if self._stopped:
            # Shutting down: pass messages straight on so nothing is lost, but only a few,
            # so a retry loop through this delay cannot spin while the engine drains.
            self._drain_passes += 1
            if self._drain_passes <= DRAIN_PASSES and self.config["on_shutdown"] == "release":
                self._emit(msg)
            else:
                self.warn("shutting down: dropped a message arriving at this delay")
            return None
        control_only = msg.keys() <= CONTROL
        has_reset, has_flush = "reset" in msg, "flush" in msg
        queued = False
        if not control_only and not (has_reset and not has_flush):
            queued = self._accept(msg)
        if has_flush:
            self._flush(msg["flush"])
        if has_reset:
            self._reset(keep_interval=has_flush)
        if not queued:
            self.done(msg)  # a control message is handled once applied
        self._show()
        return None

    def _accept(self, msg: dict) -> bool:
        """Take a message in; True when it is now held (done comes when it leaves)."""
        k = self._kind
        if k in ("delay", "delayv", "random"):
            wait = self._wait_for(msg)
            self._seq += 1
            key = self._seq
            self._pending[key] = (self.clock.call_later(wait, lambda: self._release_held(key)), msg)
            return True
        if k == "rate":
            m = clone(msg)
            m.pop("flush", None)
            m.pop("reset", None)
            if self.config["rate_from_msg"] and "rate" in m:
                ms = parse_float(m["rate"])
                if ms is not None and ms > 0 and ms / 1000 != self._period:
                    self._period = ms / 1000
                    if self._timer is not None:
                        self._arm_rate()
            if self._timer is None:
                self._emit(m)
                self._arm_rate()
            elif msg.get("toFront") is True:
                self._queue.appendleft(m)
            else:
                self._queue.append(m)
            return True
        if k == "drop":
            now = self.clock.time()
            # Node-RED compares with the exact period; allow for float error on exact multiples.
            if self._last is None or now - self._last >= self._period - 1e-9:
                self._last = now
                self.send(msg)
            else:
                self._dropped += 1
                if self.config["drop_output"]:
                    self.send([None, msg])
            self.done(msg)
            return True
        # per-topic: queue / timed
        topic = msg.get("topic")
        if topic is None or topic == "":
            msg["topic"] = topic = "_none_"
        key = _key(topic)
        old = self._slots.get(key)
        self._slots[key] = msg  # a dict keeps the position of a replaced key
        if old is not None:
            self._dropped += 1
            if self.config["drop_output"]:
                self.send([None, old])
            self.done(old)
        if self._timer is None:
            self._arm_topic()
        return True

    def _wait_for(self, msg: dict) -> float:
        if self._kind == "random":
            return self._min + (self._max - self._min) * random.random()
        if self._kind == "delayv":
            ms = parse_float(msg.get("delay"))
            if ms is not None:
                return max(0.0, ms / 1000)
        return self._delay

    # ---- leaving --------------------------------------------------------------------------
    def _emit(self, msg: dict) -> None:
        self.send(msg)
        self.done(msg)

    def _release_held(self, key: int) -> None:
        item = self._pending.pop(key, None)
        if item is not None:
            self._emit(item[1])
            self._show()

    def _arm_rate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.clock.call_later(self._period, self._rate_tick)

    def _rate_tick(self) -> None:
        self._timer = None
        if self._queue:
            self._emit(self._queue.popleft())
            self._arm_rate()  # an empty queue at the next tick makes the node idle again
        self._show()

    def _arm_topic(self) -> None:
        # Ticks keep the phase of an interval started at deploy, without ticking while idle.
        now = self.clock.time()
        k = math.floor((now - self._t0) / self._period + 1e-9) + 1
        self._timer = self.clock.call_at(self._t0 + k * self._period, self._topic_tick)

    def _topic_tick(self) -> None:
        self._timer = None
        if self._kind == "timed":
            slots, self._slots = list(self._slots.values()), {}
            for m in slots:
                self._emit(m)
        elif self._slots:
            first = next(iter(self._slots))
            self._emit(self._slots.pop(first))
        if self._slots:
            self._arm_topic()
        self._show()

    # ---- control ----------------------------------------------------------------------------
    def _flush(self, value: Any) -> None:
        k = self._kind
        if k in ("delay", "delayv", "random"):
            keys = list(self._pending)[: _flush_count(value, len(self._pending))]
            for key in keys:
                timer, m = self._pending.pop(key)
                timer.cancel()
                self._emit(m)
        elif k == "rate":
            for _ in range(_flush_count(value, len(self._queue))):
                self._emit(self._queue.popleft())
            if self._timer is not None:
                self._arm_rate()  # the next release waits a full interval from now
        elif k in ("queue", "timed"):
            for key in list(self._slots)[: _flush_count(value, len(self._slots))]:
                self._emit(self._slots.pop(key))

    def _reset(self, keep_interval: bool = False) -> None:
        dropped: list[dict] = []
        for timer, m in self._pending.values():
            timer.cancel()
            dropped.append(m)
        self._pending.clear()
        dropped.extend(self._queue)
        self._queue.clear()
        dropped.extend(self._slots.values())
        self._slots.clear()
        self._last = None
        self._period = self._period0
        if self._kind == "rate" and not keep_interval and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        elif self._kind in ("queue", "timed") and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for m in dropped:
            self.done(m)

    # ---- status and shutdown --------------------------------------------------------------
    def _held(self) -> int:
        return len(self._pending) + len(self._queue) + len(self._slots)

    def _show(self) -> None:
        if not self.flow.status_nodes:
            return
        n = self._held()
        text = f"{n}" + (f", dropped {self._dropped}" if self._dropped else "")
        self.status("blue" if n else "grey", "dot" if n else "ring", text)

    async def flush(self) -> None:
        """Shutdown: release what is held now instead of discarding it (the engine then drains)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = [m for _, m in self._pending.values()]
        for timer, _ in self._pending.values():
            timer.cancel()
        self._pending.clear()
        held.extend(self._queue)
        self._queue.clear()
        held.extend(self._slots.values())
        self._slots.clear()
        if not held:
            return
        if self.config["on_shutdown"] == "drop":
            self.log.warning("[%s] shutdown: dropped %d held message(s) (on_shutdown: drop)", self.id, len(held))
            for m in held:
                self.done(m)
            return
        self.log.warning("[%s] shutdown: releasing %d held message(s) now instead of discarding them",
                         self.id, len(held))
        for m in held:
            self._emit(m)

    async def stop(self) -> None:
        await self.flush()  # normally already done by the engine's drain phase


#: Messages a delay passes on undelayed once shutdown began (see on_input).
DRAIN_PASSES = 10


def _key(topic: Any) -> Any:
    try:
        hash(topic)
        return (type(topic).__name__, topic)
    except TypeError:
        return ("repr", repr(topic))


NODE_TYPES = [Delay]
