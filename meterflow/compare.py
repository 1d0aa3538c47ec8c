"""JavaScript's loose comparisons, for nodes that promise Node-RED's behaviour (switch).

Node-RED compares with ``==``, ``<`` and friends, so ``0 == ""``, ``false == "0"``,
``null < 9`` and ``"10" < 9`` is false (``"10"`` becomes the number 10, and ``"10" < "9"``
is true because two strings compare as text).  This module maps Python values onto
JavaScript's: ``MISSING`` is ``undefined``, ``None`` is ``null``, ``bool``/``int``/
``float``/``str`` are themselves, ``list`` is an Array, ``dict`` an Object and ``bytes`` a
Buffer.  Objects are equal only to themselves, as in JavaScript.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

from .message import MISSING

_DECIMAL = re.compile(r"[+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_INTEGER = re.compile(r"[+-]?\d+")
_RADIX = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
# JavaScript's String.prototype.trim whitespace (plus the line terminators).
_JS_SPACE = " \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
            "\u2028\u2029\u202f\u205f\u3000\ufeff"


def js_type(v: Any) -> str:
    """``undefined``, ``null``, ``boolean``, ``number``, ``string`` or ``object``."""
    if v is MISSING:
        return "undefined"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "object"


def js_number(v: Any) -> int | float:
    """``Number(v)``: "" and null are 0, undefined and non-numeric text are NaN."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return v
    if v is None:
        return 0
    if v is MISSING:
        return math.nan
    if isinstance(v, datetime):
        return v.timestamp() * 1000
    if not isinstance(v, str):
        v = to_primitive(v)
        if not isinstance(v, str):
            return js_number(v)
    text = v.strip(_JS_SPACE)
    if text == "":
        return 0
    if _INTEGER.fullmatch(text):
        return int(text)
    if _RADIX.fullmatch(text):
        return int(text, 0)
    if _DECIMAL.fullmatch(text):
        return float(text.replace("Infinity", "inf"))
    return math.nan


def _number_str(x: int | float) -> str:
    """Number.prototype.toString(): 5.0 -> "5", 1e21 -> "1e+21", 1e-7 -> "1e-7"."""
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        body = (digits[0] + ("." + digits[1:] if k > 1 else "")) + ("e+" if e >= 0 else "e-") + str(abs(e))
    return sign + body


def js_str(v: Any) -> str:
    """``String(v)``: true -> "true", 5.0 -> "5", [1, 2] -> "1,2", {} -> "[object Object]"."""
    if isinstance(v, str):
        return v
    if v is MISSING:
        return "undefined"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return _number_str(v)
    if isinstance(v, list | tuple):
        return ",".join("" if x is None or x is MISSING else js_str(x) for x in v)
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, dict):
        return "[object Object]"
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


def to_primitive(v: Any) -> Any:
    """ToPrimitive with the "number" hint: Dates become ms, other objects their text."""
    if js_type(v) != "object":
        return v
    if isinstance(v, datetime):
        return v.timestamp() * 1000
    return js_str(v)


def truthy(v: Any) -> bool:
    """JavaScript truthiness: "", 0, NaN, null, undefined and false are falsy; [] and {} are not."""
    if v is MISSING or v is None or v is False:
        return False
    if isinstance(v, int | float):
        return v == v and v != 0  # NaN is falsy
    if isinstance(v, str):
        return v != ""
    return True


_PLAIN = {int: "n", float: "n", str: "s"}  # fast path: same-kind plain values compare as in Python


def loose_eq(a: Any, b: Any) -> bool:
    """``a == b`` in JavaScript."""
    ka, kb = _PLAIN.get(type(a)), _PLAIN.get(type(b))
    if ka is not None and ka == kb:
        return a == b
    ta, tb = js_type(a), js_type(b)
    if ta == tb:
        if ta == "object":
            return a is b
        return a == b  # NaN != NaN holds for Python floats too
    if ta in ("undefined", "null") or tb in ("undefined", "null"):
        return ta in ("undefined", "null") and tb in ("undefined", "null")
    if ta == "boolean":
        return loose_eq(int(a), b)
    if tb == "boolean":
        return loose_eq(a, int(b))
    if ta == "number" and tb == "string":
        return a == js_number(b)
    if ta == "string" and tb == "number":
        return js_number(a) == b
    if ta == "object":
        return loose_eq(to_primitive(a), b)
    if tb == "object":
        return loose_eq(a, to_primitive(b))
    return False


def _utf16(s: str) -> str | bytes:
    # JavaScript orders strings by UTF-16 code units; only astral characters differ from code points.
    return s.encode("utf-16-be") if any(ord(c) > 0xFFFF for c in s) else s


def _less(a: Any, b: Any) -> bool | None:
    """The Abstract Relational Comparison ``a < b``; None stands for JavaScript's undefined (NaN)."""
    if _PLAIN.get(type(a)) == "n" and _PLAIN.get(type(b)) == "n":
        return None if a != a or b != b else a < b  # x != x: NaN
    pa, pb = to_primitive(a), to_primitive(b)
    if isinstance(pa, str) and isinstance(pb, str):
        ka, kb = _utf16(pa), _utf16(pb)
        if type(ka) is not type(kb):
            ka, kb = pa.encode("utf-16-be"), pb.encode("utf-16-be")
        return ka < kb
    na, nb = js_number(pa), js_number(pb)
    if math.isnan(na) or math.isnan(nb):
        return None
    return na < nb


def lt(a: Any, b: Any) -> bool:
    return _less(a, b) is True


def gt(a: Any, b: Any) -> bool:
    return _less(b, a) is True


def lte(a: Any, b: Any) -> bool:
    return _less(b, a) is False


def gte(a: Any, b: Any) -> bool:
    return _less(a, b) is False


def json_parses(v: Any) -> bool:
    """``JSON.parse(v)`` succeeds (it parses ``String(v)``: numbers and booleans count)."""
    if v is MISSING:
        return False

    def reject(name: str):
        raise ValueError(name)

    try:
        json.loads(js_str(v), parse_constant=reject)
    except ValueError:
        return False
    return True
