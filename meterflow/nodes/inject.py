"""inject: start a flow by hand, once at start, at an interval or on a cron schedule.

::

    - id: every-hour
      type: inject
      cron: "0 55 * * * *"         # seconds first with 6 or 7 fields, as Node-RED (see meterflow.cron)
      tz: America/Chicago          # IANA zone; default: the system zone
      props:                       # evaluated in order into a new message
        - property: payload
          type: date               # str num bool json bin date env flow global msg jsonata
        - property: topic
          value: smt/read
        - property: request.meter
          value: ${METER_ID}
        - property: label
          value: '"meter " & request.meter'   # JSONata sees the message built so far
          type: jsonata
      wires: [request]

    - id: kick
      type: inject
      payload: {odr: true}         # shorthand for props: payload (+ payload_type) and topic
      topic: start
      once: true                   # fire once after once_delay (default 0.1 s) ...
      once_delay: 2s
      repeat: 10m                  # ... then every 10 minutes (repeat wins over cron)

A value without a ``type`` is taken as it is written (text is ``str``); with neither
``props`` nor ``payload`` the payload is the time in epoch milliseconds, as Node-RED's
default.  Any message arriving on the input also fires the node (as the editor button
does); ``meterflow inject <id>`` and the test harness call :meth:`Inject.fire`.

Timing as Node-RED: with ``once`` the first repeat comes ``once_delay + repeat`` after
start.  Schedules run on the engine clock with one timer at a time: an interval re-arms
itself, a cron computes its next due time (DST-correct, in ``tz``) after each firing.
If evaluating a property fails, the error goes to catch nodes with the message built so
far, and nothing is sent.
"""

from __future__ import annotations

from typing import Any

from .. import cron, typed
from ..errors import FlowError, ParseError, kind_of
from ..message import PathError, clone, compile_path, set_path
from ..node import Node
from ..schema import Field, parse_duration

PROP_TYPES = ("str", "num", "bool", "json", "bin", "date", "env", "flow", "global", "msg", "jsonata")

PROP = Field("map", fields={
    "property": Field("path", "the msg property to set (deep paths such as request.meter are created)", required=True),
    "value": Field("any", "the value; without it, 'payload' takes the node's payload and 'topic' its topic"),
    "type": Field("str", "how to read value (default: as written; text is str)", choices=PROP_TYPES),
})


def _prop_type(prop: dict) -> str:
    """The typed-value type of a prop: given, or ``str`` for text and ``literal`` otherwise."""
    if prop.get("type"):
        return prop["type"]
    return "str" if isinstance(prop.get("value"), str) else "literal"


def resolve_props(config: dict) -> list[tuple[tuple, dict]]:
    """The props to evaluate, each with its config path (for messages), legacy shorthand applied."""
    payload = {"property": "payload", "value": config.get("payload")}
    if config.get("payload_type"):
        payload["type"] = config["payload_type"]
    elif config.get("payload") is None:
        payload = {"property": "payload", "value": "", "type": "date"}  # Node-RED's default: a timestamp
    topic = {"property": "topic", "value": config.get("topic"), "type": "str"}
    props = config.get("props")
    if props is None:
        out: list[tuple[tuple, dict]] = [(("payload",), payload)]
        if config.get("topic") is not None:
            out.append((("topic",), topic))
        return out
    out = []
    for i, p in enumerate(props):
        if "value" not in p and "type" not in p and p.get("property") in ("payload", "msg.payload"):
            out.append((("payload",), payload))  # Node-RED: a bare {p: payload} takes payload / payloadType
        elif "value" not in p and p.get("property") in ("topic", "msg.topic") and p.get("type", "str") == "str":
            out.append((("topic",), dict(topic, value=config.get("topic") or "")))
        else:
            out.append((("props", i), p))
    return out


class Inject(Node):
    type = "inject"
    summary = "Start a flow: by hand, once at start, every interval or on a cron schedule"
    is_source = True
    auto_done = False  # a failed evaluation must not count as complete; fire() calls done()
    schema = {
        "props": Field("list", "properties of the new message, evaluated in order", item=PROP),
        "payload": Field("any", "shorthand for a payload prop (used when props is absent or names payload bare)"),
        "payload_type": Field("str", "type of payload (default: as written; no payload at all: date)",
                              choices=PROP_TYPES),
        "topic": Field("str", "shorthand for a topic prop (str)"),
        "once": Field("bool", "fire once shortly after start", default=False),
        "once_delay": Field("duration", "how long after start 'once' fires", default=0.1),
        "repeat": Field("duration", "fire at this interval (0: never); wins over cron", default=0),
        "cron": Field("str", "cron schedule: 5 fields, or 6/7 with seconds first (see meterflow.cron)"),
        "tz": Field("str", "IANA time zone of the cron schedule (default: the system zone)"),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list[tuple[tuple, str]] = []
        if config.get("cron"):
            err = cron.validate(config["cron"])
            if err:
                problems.append((("cron",), err))
        if config.get("tz"):
            err = cron.validate_tz(config["tz"])
            if err:
                problems.append((("tz",), err))
        for path, prop in resolve_props(config):
            # a prop of the list: its 'value'; the payload/topic shorthand: the field itself
            vpath = path + ("value",) if path[0] == "props" else path
            tt = _prop_type(prop)
            value = prop.get("value")
            if tt == "json" and isinstance(value, str):
                try:
                    typed.evaluate(value, "json", None, None)
                except ParseError as e:
                    problems.append((vpath, str(e)))
            elif tt == "jsonata":
                from ..jsonata import check as jcheck

                err = jcheck(str(value if value is not None else ""))
                if err:
                    problems.append((vpath, err))
            elif tt == "msg":
                try:
                    compile_path(str(value))
                except PathError as e:
                    problems.append((vpath, str(e)))
            elif tt == "bin":
                try:
                    typed.evaluate(value, "bin", None, None)
                except (ValueError, TypeError) as e:
                    problems.append((vpath, f"invalid bin value: {e}"))
        return problems

    def setup(self) -> None:
        self._props = [(compile_path(str(p["property"])), _prop_type(p), p.get("value")) for _, p in resolve_props(self.config)]
        self._repeat = parse_duration(self.config.get("repeat") or 0)
        self._cron = self.config.get("cron") or None
        self._tz = cron.zone(self.config.get("tz")) if self._cron else None
        self._timer = None  # the one pending timer (once, interval or cron)
        self._due = 0.0
        if self._repeat > 0 and self._cron:
            self.warn("both 'repeat' and 'cron' are set: repeating every "
                      f"{self._repeat:g} s and ignoring the cron (as Node-RED)")
            self._cron = None

    # ---- schedule ------------------------------------------------------------------------
    async def start(self) -> None:
        if self.config["once"]:
            self._timer = self.clock.call_later(parse_duration(self.config["once_delay"]), self._once)
        else:
            self._start_repeater()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cron = None
        self._repeat = 0.0

    def _once(self) -> None:
        self._timer = None
        self.fire()
        self._start_repeater()

    def _start_repeater(self) -> None:
        if self._repeat > 0:
            self._due = self.clock.time() + self._repeat
            self._timer = self.clock.call_at(self._due, self._tick)
        elif self._cron:
            self._arm_cron(self.clock.time())

    def _tick(self) -> None:
        # Anchored on the due time, so intervals do not drift by the callback latency.
        # After a stall (suspend, a blocked loop) fire once and carry on from now, not in a burst.
        now = self.clock.time()
        self._due += self._repeat
        if self._due <= now:
            self._due = now + self._repeat
        self._timer = self.clock.call_at(self._due, self._tick)
        self.fire()

    def _arm_cron(self, after: float) -> None:
        nxt = cron.next_fire(self._cron, after, self._tz)
        if nxt is None:
            self._timer = None
            self.status("grey", "ring", "schedule ended")
            return
        self._due = nxt
        self._timer = self.clock.call_at(nxt, self._cron_tick)

    def _cron_tick(self) -> None:
        # From the due time, not "now": a real timer may run a hair early and must not fire twice.
        self._arm_cron(max(self._due, self.clock.time()))
        self.fire()

    # ---- firing -----------------------------------------------------------------------------
    def build(self) -> tuple[dict, list]:
        """The new message and the errors met while evaluating its properties."""
        msg: dict[str, Any] = {}
        errors: list[BaseException | str] = []
        for path, tt, value in self._props:
            try:
                if tt == "literal":
                    v = clone({"v": value})["v"] if isinstance(value, dict | list) else value
                else:
                    v = typed.evaluate(value, tt, self, msg)
                    if tt == "json" and not isinstance(value, str) and isinstance(v, dict | list):
                        v = clone({"v": v})["v"]  # YAML structure: each message gets its own copy
                if not set_path(msg, path, v):
                    errors.append(f"cannot set property of non-object type: {'.'.join(map(str, path))}")
            except (FlowError, PathError, ValueError, TypeError) as e:
                errors.append(e)
        return msg, errors

    def fire(self) -> dict | None:
        """Inject now: build the message and send it (None when an evaluation failed)."""
        msg, errors = self.build()
        if errors:
            # As Node-RED: every problem in one error, with the message as built so far.
            first = next((e for e in errors if isinstance(e, BaseException)), None)
            kind = kind_of(first) if first is not None else "runtime"
            self.error(FlowError("; ".join(map(str, errors)), kind=kind), msg)
            return None
        self.send(msg)
        self.done(msg)
        return msg

    def on_input(self, msg: dict) -> None:
        self.fire()
        return None

NODE_TYPES = [Inject]
