"""json: convert a property between JSON text and data.

::

    - id: parse
      type: json
      action: auto         # auto (default): text -> data, data -> text; obj: only parse; str: only stringify
      property: payload
      pretty: false        # stringify with a 4-space indent

As Node-RED: text or bytes holding JSON are parsed; a mapping, list, number, boolean or
null becomes JSON text (the number 5 becomes ``"5"``, 5.0 too, as JavaScript writes it;
NaN and infinities become ``null``, bytes ``{"type": "Buffer", "data": [...]}``).  A
message without the property passes unchanged.  Invalid JSON is an error of kind
``parse`` (catch it); the message is not sent on.  ``NaN``/``Infinity`` are not JSON.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from ..errors import ParseError
from ..message import MISSING, ParentMissing, lookup, set_path
from ..node import Node
from ..schema import Field


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes) -> Any:
    """``JSON.parse``: strict (no NaN/Infinity); bytes are read as UTF-8."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise ParseError(f"invalid JSON: {e}") from None


def _jsonable(v: Any) -> Any:
    """Values as JavaScript's JSON.stringify sees them."""
    t = type(v)
    if t is float:
        if math.isnan(v) or math.isinf(v):
            return None
        return int(v) if v.is_integer() and abs(v) < 1e21 else v
    if t is dict:
        return {k: _jsonable(x) for k, x in v.items() if x is not MISSING}
    if t is list or t is tuple:
        return [None if x is MISSING else _jsonable(x) for x in v]
    if isinstance(v, bytes | bytearray):
        return {"type": "Buffer", "data": list(v)}
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return v


def stringify(value: Any, pretty: bool = False) -> str:
    """``JSON.stringify(value)`` (``pretty``: with a 4-space indent, as Node-RED's json node)."""
    try:
        if pretty:
            return json.dumps(_jsonable(value), indent=4, ensure_ascii=False)
        return json.dumps(_jsonable(value), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ParseError(f"cannot convert to JSON: {e}") from None


class Json(Node):
    type = "json"
    summary = "Parse JSON text into data, or turn data into JSON text"
    schema = {
        "action": Field("str", "auto: convert either way; obj: only parse text; str: only stringify data",
                        choices=("auto", "obj", "str"), default="auto"),
        "property": Field("path", "the message property to convert", default="payload"),
        "pretty": Field("bool", "indent the JSON text by 4 spaces", default=False),
    }

    def setup(self) -> None:
        self._action = self.config["action"]
        self._prop = self.config["property"]
        self._pretty = self.config["pretty"]

    def on_input(self, msg: dict):
        try:
            value = lookup(msg, self._prop)
        except ParentMissing:
            return msg
        if value is MISSING:
            return msg  # as Node-RED: nothing to convert, pass it on
        if isinstance(value, str | bytes | bytearray):
            if self._action != "str":
                set_path(msg, self._prop, parse_json(value))
        elif self._action != "obj":
            set_path(msg, self._prop, stringify(value, self._pretty))
        return msg


NODE_TYPES = [Json]
