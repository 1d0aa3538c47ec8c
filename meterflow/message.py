"""Messages are plain dicts.  This module holds what nodes do to them.

Property paths follow Node-RED's expression syntax (``payload.odrRead.registeredRead``,
``headers["content-type"]``, ``a[0]``, ``a[msg.topic]``); they are parsed once and
cached, so a hop costs a tuple walk, not a parse.
"""

from __future__ import annotations

import copy
import random
import re
from functools import lru_cache
from typing import Any

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING", "__bool__": lambda self: False})()


class PathError(ValueError):
    """An invalid property expression (Node-RED's INVALID_EXPR)."""


class ParentMissing(LookupError):
    """Reading ``a.b.c`` where ``a.b`` does not exist (Node-RED throws a TypeError here)."""


class MsgRef:
    """A ``[msg.x]`` segment, resolved against the message at run time."""

    __slots__ = ("path",)

    def __init__(self, path: tuple):
        self.path = path

    def __eq__(self, other):
        return isinstance(other, MsgRef) and other.path == self.path

    def __hash__(self):
        return hash(self.path)


_IDENT = re.compile(r"[^.\[\]\s]+")


@lru_cache(maxsize=4096)
def compile_path(expr: str, strip_msg: bool = True) -> tuple:
    """Parse a property expression into a tuple of str / int / MsgRef segments."""
    if not isinstance(expr, str) or not expr or expr != expr.strip():
        raise PathError(f"invalid property expression {expr!r}")
    if strip_msg and expr.startswith("msg."):
        expr = expr[4:]
    segs: list = []
    i, n = 0, len(expr)
    expect_name = True
    while i < n:
        c = expr[i]
        if c == "[":
            j = i + 1
            if j < n and expr[j] in "'\"":
                quote = expr[j]
                end = expr.find(quote, j + 1)
                if end < 0 or end + 1 >= n or expr[end + 1] != "]":
                    raise PathError(f"invalid property expression {expr!r}: unterminated quote")
                segs.append(expr[j + 1 : end])
                i = end + 2
            else:
                end, depth = j, 1
                while end < n and depth:
                    depth += {"[": 1, "]": -1}.get(expr[end], 0)
                    end += 1
                if depth:
                    raise PathError(f"invalid property expression {expr!r}: unterminated [")
                inner = expr[j : end - 1].strip()
                if inner.isdigit():
                    segs.append(int(inner))
                elif inner.startswith("msg."):
                    segs.append(MsgRef(compile_path(inner)))
                else:
                    raise PathError(f"invalid property expression {expr!r}: bad index [{inner}]")
                i = end
            expect_name = False
        elif c == ".":
            if expect_name:
                raise PathError(f"invalid property expression {expr!r}: empty segment")
            expect_name = True
            i += 1
            if i >= n:
                raise PathError(f"invalid property expression {expr!r}: ends with '.'")
        else:
            if not expect_name:
                raise PathError(f"invalid property expression {expr!r}")
            m = _IDENT.match(expr, i)
            if not m:
                raise PathError(f"invalid property expression {expr!r}")
            name = m.group(0)
            segs.append(int(name) if name.isdigit() and segs else name)
            i = m.end()
            expect_name = False
    if expect_name:
        raise PathError(f"invalid property expression {expr!r}")
    return tuple(segs)


def _resolve(segs: tuple, root: dict) -> tuple:
    if not any(type(s) is MsgRef for s in segs):
        return segs
    out = []
    for s in segs:
        if type(s) is MsgRef:
            v = lookup(root, s.path)
            if v is MISSING:
                raise PathError("property expression refers to a missing msg property")
            s = v
        out.append(s)
    return tuple(out)


def _child(obj: Any, seg):
    if isinstance(obj, dict):
        return obj.get(seg, MISSING)
    if isinstance(obj, list) and type(seg) is int:
        return obj[seg] if -len(obj) <= seg < len(obj) else MISSING
    return MISSING


def lookup(obj: Any, path: str | tuple, root: dict | None = None) -> Any:
    """Value at ``path``; MISSING for a missing leaf, ParentMissing for a missing parent."""
    segs = compile_path(path) if isinstance(path, str) else path
    segs = _resolve(segs, root if root is not None else obj)
    last = len(segs) - 1
    for i, seg in enumerate(segs):
        nxt = _child(obj, seg)
        if nxt is MISSING:
            if i == last:
                return MISSING
            raise ParentMissing(".".join(map(str, segs[: i + 1])))
        obj = nxt
    return obj


def get(obj: Any, path: str | tuple, default: Any = MISSING) -> Any:
    """Value at ``path`` or ``default`` when any part of it is missing."""
    try:
        v = lookup(obj, path)
    except ParentMissing:
        return default
    return default if v is MISSING else v


def set_path(obj: dict, path: str | tuple, value: Any, create: bool = True) -> bool:
    """Set (or delete when ``value`` is MISSING).  False when a parent is not a container."""
    segs = compile_path(path) if isinstance(path, str) else path
    segs = _resolve(segs, obj)
    for i, seg in enumerate(segs[:-1]):
        nxt = _child(obj, seg)
        if nxt is MISSING:
            if value is MISSING or not create:
                return True
            nxt = [] if type(segs[i + 1]) is int else {}
            if isinstance(obj, list):
                obj.extend([None] * (seg + 1 - len(obj)))
            obj[seg] = nxt
        elif not isinstance(nxt, dict | list):
            return False
        obj = nxt
    leaf = segs[-1]
    if value is MISSING:
        if isinstance(obj, dict):
            obj.pop(leaf, None)
        elif isinstance(obj, list) and type(leaf) is int and leaf < len(obj):
            del obj[leaf]
        return True
    if isinstance(obj, list):
        if type(leaf) is not int:
            return False
        if leaf >= len(obj):
            obj.extend([None] * (leaf + 1 - len(obj)))
    elif not isinstance(obj, dict):
        return False
    obj[leaf] = value
    return True


def delete(obj: dict, path: str | tuple) -> None:
    set_path(obj, path, MISSING)


_ATOMS = (str, int, float, bool, type(None), bytes)


def _copy(v: Any) -> Any:
    # Copy the container in C first, then revisit only the values that are containers
    # themselves: messages are mostly flat, so this is several times faster than deepcopy.
    t = type(v)
    if t is dict:
        out = v.copy()
        for k, x in out.items():
            tx = type(x)
            if tx is dict or tx is list:
                out[k] = _copy(x)
            elif tx not in _ATOMS:
                out[k] = copy.deepcopy(x)
        return out
    if t is list:
        out = v.copy()
        for i, x in enumerate(out):
            tx = type(x)
            if tx is dict or tx is list:
                out[i] = _copy(x)
            elif tx not in _ATOMS:
                out[i] = copy.deepcopy(x)
        return out
    if t in _ATOMS:
        return v
    return copy.deepcopy(v)


def clone(msg: dict) -> dict:
    """Deep copy, as RED.util.cloneMessage: ``req``/``res`` stay shared.

    A hand-rolled walk of dicts and lists is several times faster than
    ``copy.deepcopy`` for the JSON-shaped data messages carry; anything else falls back.
    """
    if "req" in msg or "res" in msg:
        shared = {k: msg[k] for k in ("req", "res") if k in msg}
        out = _copy({k: v for k, v in msg.items() if k not in shared})
        out.update(shared)
        return out
    return _copy(msg)


def new_msgid() -> str:
    return f"{random.getrandbits(64):016x}"


def summary(msg: dict, limit: int = 120) -> str:
    """A short one-line rendering for traces and logs (callers redact it)."""
    parts = []
    for key in ("topic", "payload"):
        if key in msg:
            parts.append(f"{key}={msg[key]!r}")
    text = " ".join(parts) or "{}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
