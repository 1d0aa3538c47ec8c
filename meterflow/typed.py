"""Typed values, as Node-RED's ``evaluateNodeProperty``: a value plus its type.

Types: ``str num bool json bin re date msg flow global env jsonata``.  Conversions
follow Node-RED (``num`` of "" is 0, ``bool`` is true only for "true" in any case,
``date`` with no format is epoch milliseconds, ``env`` of an unset variable is "").
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from .errors import ParseError
from .message import MISSING, ParentMissing, get, lookup

TYPES = ("str", "num", "bool", "json", "bin", "re", "date", "msg", "flow", "global", "env", "jsonata")


def to_number(value: Any) -> float | int:
    """JavaScript's ``Number()``: "" -> 0, "abc" -> NaN, keeps ints as ints."""
    from .compare import js_number

    return js_number(value)


def to_bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def context_key(value: str) -> tuple[str | None, str]:
    """Split Node-RED's ``#:(store)::key`` form; the store name is ignored by one-store flows."""
    m = re.match(r"#:\((\w+)\)::(.*)$", value)
    return (m.group(1), m.group(2)) if m else (None, value)


def format_date(fmt: str, now: float) -> Any:
    if not fmt:
        return int(now * 1000)
    dt = datetime.fromtimestamp(now, tz=UTC)
    if fmt == "iso":
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if fmt == "object":
        return dt
    return dt.astimezone().strftime(fmt)


def evaluate(value: Any, vtype: str, node, msg: dict | None) -> Any:
    """Evaluate ``value`` of type ``vtype`` for ``node`` (may be None) against ``msg``.

    Returns MISSING for a missing msg/context property."""
    if vtype == "str":
        return "" if value is None else (value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value))
    if vtype == "num":
        return to_number(value)
    if vtype == "bool":
        return value if isinstance(value, bool) else to_bool(value)
    if vtype == "json":
        if not isinstance(value, str):
            return value  # YAML already gave us the structure
        try:
            return json.loads(value)
        except ValueError as e:
            raise ParseError(f"invalid JSON {value!r}: {e}") from None
    if vtype == "bin":
        data = json.loads(value) if isinstance(value, str) else value
        return bytes(data) if isinstance(data, list) else str(data).encode()
    if vtype == "re":
        return re.compile(value)
    if vtype == "date":
        clock_now = node.clock.time() if node is not None else time.time()
        return format_date(value or "", clock_now)
    if vtype == "msg":
        if msg is None:
            return MISSING
        try:
            return lookup(msg, value)
        except ParentMissing:
            return MISSING
    if vtype in ("flow", "global"):
        ctx = node.flow_context if vtype == "flow" else node.global_context
        _, key = context_key(value)
        v = get(ctx.data, key)
        return v
    if vtype == "env":
        name = value[2:-1] if isinstance(value, str) and value.startswith("${") and value.endswith("}") else value
        return os.environ.get(str(name), "")
    if vtype == "jsonata":
        from .jsonata import evaluate as jsonata_eval

        return jsonata_eval(value, msg or {}, node)
    return value
