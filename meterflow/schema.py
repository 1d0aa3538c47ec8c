"""Node config schemas: declared once, enforced by ``check``, printed by ``meterflow nodes``.

A schema is a dict of field name -> :class:`Field`.  Validation collects every problem
as ``(path, message)`` pairs; the flow loader maps each path back to file:line:col.
Deliberately small (no pydantic): ``meterflow run`` must start in tens of milliseconds.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from .message import MISSING, PathError, compile_path

TYPES = ("str", "int", "number", "bool", "duration", "path", "list", "map", "dict", "any", "ref", "node", "nodes")


@dataclass
class Field:
    """One config field.

    ``type`` is one of :data:`TYPES`: ``ref`` names a config node (of ``ref`` type),
    ``node``/``nodes`` name other nodes of the flow, ``path`` is a msg property
    expression, ``duration`` is seconds or a string such as ``"3m"`` / ``"250ms"``,
    ``map`` is a nested object described by ``fields``, ``list`` a list of ``item``.
    A field may accept several types: ``type="str|number"``.
    """

    type: str = "any"
    doc: str = ""
    required: bool = False
    default: Any = MISSING
    choices: tuple | None = None
    item: Field | None = None
    fields: dict[str, Field] | None = None
    ref: str | None = None  # config-node type for "ref"
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    extra: bool = False  # map: allow keys not listed in fields

    def describe(self) -> str:
        t = self.type
        if self.ref:
            t += f" -> {self.ref}"
        if self.type == "list" and self.item is not None:
            t = f"list of {self.item.describe().split(' — ')[0]}"
        bits = [t]
        if self.choices:
            bits.append("one of " + ", ".join(map(repr, self.choices)))
        if self.required:
            bits.append("required")
        elif self.default is not MISSING:
            bits.append(f"default {self.default!r}")
        if self.secret:
            bits.append("secret")
        text = "; ".join(bits)
        return f"{text} — {self.doc}" if self.doc else text


_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``10s``, ``3m``, ``1h30m``, ``250ms``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 3m or 250ms, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DUR.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"invalid duration {value!r}: write seconds (30) or e.g. 10s, 3m, 1h30m, 250ms")


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


def _type_ok(t: str, v: Any) -> bool:
    if t == "str":
        return isinstance(v, str)
    if t == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if t == "bool":
        return isinstance(v, bool)
    if t in ("list", "nodes"):
        return isinstance(v, list)
    if t in ("map", "dict"):
        return isinstance(v, dict)
    if t in ("ref", "node", "path"):
        return isinstance(v, str)
    if t == "duration":
        try:
            parse_duration(v)
            return True
        except ValueError:
            return False
    return True


def _describe_value(v: Any) -> str:
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int | float):
        return f"number {v!r}"
    if v is None:
        return "null"
    return type(v).__name__ if not isinstance(v, dict | list) else ("a mapping" if isinstance(v, dict) else "a list")


_TYPE_WORDS = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
               "list": "a list", "map": "a mapping", "dict": "a mapping", "ref": "the id of a config node",
               "node": "a node id", "nodes": "a list of node ids", "path": "a property path such as payload.value",
               "duration": "a duration such as 10s, 3m or 250ms", "any": "a value"}


def _hint(types: list[str], v: Any) -> str:
    if isinstance(v, str):
        low = v.lower()
        if "bool" in types and low in _BOOL_WORDS:
            return " (YAML 1.2: write true or false)"
        if {"int", "number"} & set(types) and re.fullmatch(r"[-+]?0\d+", v):
            return " (leading zeros are kept as text; write the number without them, or quote it where a string is meant)"
        if {"int", "number"} & set(types) and re.fullmatch(r"\d+:\d+(:\d+)?", v):
            return " (quote times and write them where a string is expected)"
    return ""


def validate(config: Any, schema: dict[str, Field], path: tuple = ()) -> list[tuple[tuple, str]]:
    """Every problem of ``config`` against ``schema`` as (path, message)."""
    problems: list[tuple[tuple, str]] = []
    if not isinstance(config, dict):
        return [(path, f"expected a mapping, got {_describe_value(config)}")]
    for key in config:
        if key not in schema:
            problems.append((path + (key,), f"unknown field {key!r}{did_you_mean(key, schema)}"))
    for name, f in schema.items():
        if name not in config or config[name] is None and f.required:
            if f.required:
                problems.append((path + (name,) if name in config else path, f"missing required field {name!r}"))
            continue
        problems.extend(check_value(config[name], f, path + (name,), name))
    return problems


def check_value(v: Any, f: Field, path: tuple, label: str) -> list[tuple[tuple, str]]:
    types = f.type.split("|")
    if v is None and not f.required:
        return []
    if not any(_type_ok(t, v) for t in types):
        want = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        if "duration" in types and isinstance(v, str | int | float):
            try:
                parse_duration(v)
            except ValueError as e:
                return [(path, f"field {label!r}: {e}")]
        return [(path, f"field {label!r}: expected {want}, got {_describe_value(v)}{_hint(types, v)}")]
    problems: list[tuple[tuple, str]] = []
    if f.choices is not None and v not in f.choices:
        problems.append((path, f"field {label!r}: {v!r} is not one of {', '.join(map(repr, f.choices))}"
                         f"{did_you_mean(v, f.choices)}"))
    if isinstance(v, int | float) and not isinstance(v, bool):
        if f.minimum is not None and v < f.minimum:
            problems.append((path, f"field {label!r}: {v} is below the minimum {f.minimum}"))
        if f.maximum is not None and v > f.maximum:
            problems.append((path, f"field {label!r}: {v} is above the maximum {f.maximum}"))
    if "path" in types and isinstance(v, str):
        try:
            compile_path(v)
        except PathError as e:
            problems.append((path, f"field {label!r}: {e}"))
    if isinstance(v, list) and f.item is not None:
        for i, x in enumerate(v):
            problems.extend(check_value(x, f.item, path + (i,), f"{label}[{i}]"))
    if isinstance(v, dict) and f.fields is not None:
        if f.extra:
            for k, sub in f.fields.items():
                if k in v:
                    problems.extend(check_value(v[k], sub, path + (k,), k))
        else:
            problems.extend(validate(v, f.fields, path))
    return problems


def defaults(schema: dict[str, Field], config: dict) -> dict:
    """``config`` with nested defaults applied (lists of maps included)."""
    out = dict(config)
    for name, f in schema.items():
        if name not in out or out[name] is None:
            if f.default is not MISSING:
                out[name] = f.default() if callable(f.default) else f.default
            continue
        v = out[name]
        if f.fields is not None and isinstance(v, dict):
            out[name] = defaults(f.fields, v)
        elif f.item is not None and f.item.fields is not None and isinstance(v, list):
            out[name] = [defaults(f.item.fields, x) if isinstance(x, dict) else x for x in v]
    return out


def secret_values(schema: dict[str, Field], config: Any):
    """The values of fields marked ``secret``, nested maps and lists included."""
    if not isinstance(config, dict):
        return
    for name, f in schema.items():
        v = config.get(name)
        if f.secret and isinstance(v, str):
            yield v
        if f.fields is not None:
            yield from secret_values(f.fields, v)
        if f.item is not None and f.item.fields is not None and isinstance(v, list):
            for x in v:
                yield from secret_values(f.item.fields, x)
