"""trigger: send one value now and another after a while (Node-RED's trigger node).

::

    - id: switch-alarm
      type: trigger
      first: "on"                 # sent at once (first_type: str num bool json bin date env flow
      second: "off"               #   global jsonata, payload = the message as it came, nothing)
      duration: 5m                # then the second value, 5 minutes later
      extend: true                # each new message restarts the 5 minutes
      wires: [ha-switch]

    - id: one-per-outage
      type: trigger
      first_type: payload         # pass the first message on unchanged ...
      block: true                 # ... then let nothing through until reset
      reset_value: recovered      # a payload equal to this resets (as does any msg.reset)
      per_topic: true             # one state per msg.topic (topic_property picks another property)

    - id: heartbeat
      type: trigger
      first: ping
      loop: true                  # resend the first value every 'duration' until reset
      duration: 30s

Defaults are Node-RED's: first ``"1"``, second ``"0"``, 250 ms.  While a trigger runs,
further messages are ignored (unless ``extend``); ``loop`` restarts on each message.
second_type also accepts ``payload`` (the first message's payload) and ``latest`` (the
whole latest message received while waiting).  The second message is the triggering
message (or, with ``extend``, the latest one: Node-RED's behaviour) with its payload set
to the second value; ``second_output: true`` sends it on a second output.
``delay_from_msg`` lets a numeric ``msg.delay`` (milliseconds) set the duration.
Stopping the flow cancels a pending second value (it is generated, not held data).
"""

from __future__ import annotations

from typing import Any

from .. import typed
from ..clock import Timer
from ..errors import ParseError
from ..message import clone, get
from ..node import Node
from ..schema import Field, parse_duration
from .delay import parse_float

VALUE_TYPES = ("str", "num", "bool", "json", "bin", "date", "env", "flow", "global", "jsonata")
FIRST_TYPES = VALUE_TYPES + ("payload", "nothing")
SECOND_TYPES = FIRST_TYPES + ("latest",)
NONE_TOPIC = "_none_"


def js_string(value: Any) -> str | None:
    """JavaScript's ``String(value)`` for the primitives a reset value is compared with."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


def _vtype(config: dict, which: str, default_value: str) -> tuple[Any, str]:
    value = config.get(which)
    vtype = config.get(f"{which}_type")
    if value is None and vtype is None:
        return default_value, "str"
    if vtype is None:
        vtype = "str" if isinstance(value, str) else "literal"
    return value, vtype


class _State:
    __slots__ = ("timer", "second", "latest")

    def __init__(self) -> None:
        self.timer: Timer | None = None
        self.second: Any = None  # the second value, evaluated when the trigger started
        self.latest: dict | None = None  # second_type latest: the latest message


class Trigger(Node):
    type = "trigger"
    summary = "Send a value now and another after a delay; extend, block until reset or repeat"
    schema = {
        "first": Field("any", "value sent at once (default \"1\")"),
        "first_type": Field("str", "how to read 'first' (default: as written)", choices=FIRST_TYPES),
        "second": Field("any", "value sent after 'duration' (default \"0\")"),
        "second_type": Field("str", "how to read 'second' (default: as written)", choices=SECOND_TYPES),
        "duration": Field("duration", "wait before the second value (0: wait for a reset)", default=0.25),
        "extend": Field("bool", "restart the wait on each new message", default=False),
        "block": Field("bool", "after the first value, send nothing until reset", default=False),
        "loop": Field("bool", "resend the first value every 'duration' until reset", default=False),
        "delay_from_msg": Field("bool", "a numeric msg.delay (ms) sets the duration", default=False),
        "reset_value": Field("str|number|bool", "a payload equal to this resets (as does msg.reset)"),
        "per_topic": Field("bool", "keep a separate trigger per topic", default=False),
        "topic_property": Field("path", "the property that names the topic", default="topic"),
        "second_output": Field("bool", "send the second value on a second output", default=False),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return ["0", "1"] if config.get("second_output") else ["0"]

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list[tuple[tuple, str]] = []
        if config.get("loop"):
            if config.get("block"):
                problems.append((("loop",), "choose either 'loop' or 'block'"))
            if parse_duration(config["duration"]) <= 0 and not config.get("delay_from_msg"):
                problems.append((("duration",), "'loop' needs a duration longer than 0"))
            if config.get("first_type") == "nothing":
                problems.append((("loop",), "'loop' resends the first value, but first_type is 'nothing'"))
        for which in ("first", "second"):
            value, vtype = _vtype(config, which, "")
            if vtype == "json" and isinstance(value, str):
                try:
                    typed.evaluate(value, "json", None, None)
                except ParseError as e:
                    problems.append(((which,), str(e)))
            elif vtype == "jsonata":
                from ..jsonata import check as jcheck

                err = jcheck(str(value))
                if err:
                    problems.append(((which,), err))
        return problems

    def setup(self) -> None:
        c = self.config
        self._first, self._first_type = _vtype(c, "first", "1")
        self._second, self._second_type = _vtype(c, "second", "0")
        self._duration = parse_duration(c["duration"])
        rv = c.get("reset_value")
        self._reset_value = None if rv is None or rv == "" else js_string(rv)
        self._states: dict[Any, _State] = {}

    def _value(self, value: Any, vtype: str, msg: dict) -> Any:
        if vtype == "literal":
            return clone({"v": value})["v"] if isinstance(value, dict | list) else value
        v = typed.evaluate(value, vtype, self, msg)
        if vtype == "json" and not isinstance(value, str):
            v = clone({"v": v})["v"]
        return v

    def _topic(self, msg: dict) -> Any:
        if not self.config["per_topic"]:
            return NONE_TOPIC
        t = get(msg, self.config["topic_property"], None)
        if t is None or t == "" or t is False or t == 0:  # JavaScript's falsy, as Node-RED's `|| "_none_"`
            return NONE_TOPIC
        return t if isinstance(t, str | int | float | bool) else repr(t)

    def _is_reset(self, msg: dict) -> bool:
        if "reset" in msg:
            return True
        if self._reset_value is None or msg.get("payload") is None:
            return False
        return js_string(msg["payload"]) == self._reset_value

    def _wait(self, msg: dict) -> float:
        if self.config["delay_from_msg"] and "delay" in msg:
            ms = parse_float(msg["delay"])
            if ms is not None:
                return max(0.0, ms / 1000)
        return self._duration

    # ---- input ----------------------------------------------------------------------------
    def on_input(self, msg: dict) -> None:
        topic = self._topic(msg)
        st = self._states.get(topic)
        if self._is_reset(msg):
            if st is not None:
                self._cancel(st)
                del self._states[topic]
            self._show()
            return None
        if st is not None and self._second_type == "latest":
            st.latest = clone(msg)
        wait = self._wait(msg)
        if st is None or self.config["loop"]:
            self._start(topic, st, msg, wait)
        elif self.config["extend"] and not self.config["block"] and wait > 0 and st.timer is not None:
            # Restart the wait; the second message is built from this, the latest, message.
            st.timer.cancel()
            st.timer = self.clock.call_later(wait, lambda: self._fire_second(topic, msg))
        # otherwise: running (or blocked) and not extending, so the message is ignored
        return None

    def _start(self, topic: Any, st: _State | None, msg: dict, wait: float) -> None:
        # Evaluate both values before touching the state: a failing expression must not
        # leave a trigger that blocks its topic forever.
        kind2 = self._second_type
        second = None
        latest = clone(msg) if kind2 == "latest" and st is None else None
        if kind2 == "payload":
            second = clone({"v": msg.get("payload")})["v"]
        elif kind2 not in ("nothing", "latest", "flow", "global"):  # flow/global: read when the time comes
            second = self._value(self._second, kind2, msg)
        if self._first_type == "nothing":
            out = None
        else:
            if self._first_type != "payload":
                msg["payload"] = self._value(self._first, self._first_type, msg)
            out = msg
        if st is None:
            st = self._states[topic] = _State()
            st.latest = latest
        st.second = second
        if self.config["loop"]:
            self._cancel(st)
            if out is not None:
                again = clone(out)
                st.timer = self._loop(topic, again, wait)
        elif self.config["block"] or wait <= 0:
            st.timer = None  # held until a reset
        else:
            st.timer = self.clock.call_later(wait, lambda: self._fire_second(topic, msg))
        self.status("blue", "dot", " ")
        if out is not None:
            self.send(clone(out))  # a copy: ``msg`` is the base of the second message

    def _loop(self, topic: Any, msg: dict, every: float) -> Timer:
        def again() -> None:
            st = self._states.get(topic)
            if st is None:
                return
            st.timer = self.clock.call_later(every, again)
            self.send(clone(msg))

        return self.clock.call_later(every, again)

    def _fire_second(self, topic: Any, base: dict) -> None:
        st = self._states.pop(topic, None)
        if st is None:
            return
        self._show()
        kind = self._second_type
        if kind == "nothing":
            return
        if kind == "latest":
            out = st.latest if st.latest is not None else clone(base)
        else:
            out = clone(base)
            if kind in ("flow", "global"):
                try:
                    st.second = self._value(self._second, kind, base)
                except Exception as e:  # report with the message, as any node error
                    self.error(e, out)
                    return
            out["payload"] = st.second
        self.send([None, out] if self.config["second_output"] else out)

    # ---- state ---------------------------------------------------------------------------
    @staticmethod
    def _cancel(st: _State) -> None:
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None

    def _show(self) -> None:
        if not self._states:
            self.status(None, None, "")
        else:
            self.status("blue", "dot", " ")

    async def stop(self) -> None:
        for st in self._states.values():
            self._cancel(st)
        self._states.clear()


NODE_TYPES = [Trigger]
