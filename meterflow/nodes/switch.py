"""switch: route a message to the outputs whose rule matches a property.

::

    - id: route
      type: switch
      property: payload.status        # msg path; flow.<key> / global.<key> read context
      # property_type: jsonata        # or msg (default), flow, global, env
      check_all: true                 # false: stop at the first matching rule
      rules:
        - {op: eq, value: COMPLETED, output: ready}
        - {op: eq, value: PENDING, output: pending}
        - {op: regex, value: "^err", case_insensitive: true}
        - {op: btwn, value: 0, value2: 100}
        - {op: else, output: other}
      wires:
        ready: [publish]
        pending: [wait]
        other: [log]

One output per rule, named by the rule's ``output`` (else its index, "0", "1", ...).
A message goes to every matching output (``check_all: false``: the first only); later
outputs get copies.  Operators, with Node-RED's names and JavaScript's loose semantics
(``0 == ""``, ``null < 9``, ``"10" < 9`` is false — see :mod:`meterflow.compare`):

* ``eq neq lt lte gt gte`` compare with ``value``; ``btwn`` is inclusive between
  ``value`` and ``value2`` in either order; ``cont`` is a substring test on the text of
  the property; ``regex`` searches it (Python ``re`` syntax; ``case_insensitive``).
* ``true false null nnull empty nempty`` need no value (``null`` also matches a missing
  property; ``empty`` is "", [], {} or empty bytes, anything else is neither empty nor not).
* ``istype`` with ``value`` one of array buffer json null number undefined string
  boolean object; ``hask`` (has key ``value``).
* ``head``/``tail``/``index`` look at ``msg.parts`` (first N, last N, index in
  value..value2); ``tail`` holds a group's messages until its count is known.
* ``jsonata_exp``: ``value`` is a JSONata expression (``$I``/``$N``: parts index/count)
  and the rule matches when it gives exactly true.
* ``else`` matches when no rule matched since the previous ``else``.

``value_type``/``value2_type``: str num bool json msg flow global env prev jsonata.
``prev`` is the property's value on the previous message (null at first), so
``{op: btwn, value: 10, value2_type: prev}`` is Node-RED's "between 10 and previous
value".  Without a type, a text value that reads as a number is a number (``"5"``, and
Node-RED's quirk ``""`` -> 0); other YAML values (numbers, booleans, lists) are used as
they are.  Not supported: Node-RED's "recreate message sequences" (``repair``).

As in Node-RED, switch never signals completion, so a complete node never fires for it.
"""

from __future__ import annotations

import re
from typing import Any

from .. import compare, typed
from ..errors import ParseError
from ..message import MISSING, ParentMissing, PathError, compile_path, lookup
from ..node import Node
from ..schema import Field
from .change import split_target

COMPARISONS = ("eq", "neq", "lt", "lte", "gt", "gte")
OPS = (*COMPARISONS, "btwn", "cont", "regex", "true", "false", "null", "nnull", "istype", "empty",
       "nempty", "head", "tail", "index", "hask", "jsonata_exp", "else")
NO_VALUE = ("true", "false", "null", "nnull", "empty", "nempty", "else")
TWO_VALUES = ("btwn", "index")
VALUE_TYPES = ("str", "num", "bool", "json", "msg", "flow", "global", "env", "prev", "jsonata")
ISTYPES = ("array", "buffer", "json", "null", "number", "undefined", "string", "boolean", "object")
PROPERTY_TYPES = ("msg", "flow", "global", "env", "jsonata")

RULE = Field("map", fields={
    "op": Field("str", "the operator", choices=OPS, required=True),
    "value": Field("any", "what to compare with (the type name for istype, the expression for jsonata_exp)"),
    "value_type": Field("str", "how to read 'value' (default: a number if it reads as one, else text)",
                        choices=VALUE_TYPES),
    "value2": Field("any", "the second value (btwn, index)"),
    "value2_type": Field("str", "how to read 'value2'", choices=VALUE_TYPES),
    "case_insensitive": Field("bool", "regex: ignore case", default=False),
    "output": Field("str", "a name for this rule's output, usable as a key of 'wires'"),
})


def _vtype(value: Any, vtype: str | None) -> str:
    """Node-RED's deploy-time typing of a rule value without ``vt``."""
    if vtype:
        return vtype
    if isinstance(value, str):
        n = compare.js_number(value)
        return "num" if n == n else "str"
    return "literal"


def _js_regex(pattern: str) -> str:
    # JavaScript's named groups (?<name>...) are (?P<name>...) in Python.
    return re.sub(r"\(\?<(?![=!])", "(?P<", pattern)


def compile_regex(pattern: Any, ignore_case: bool) -> re.Pattern:
    return re.compile(_js_regex(compare.js_str(pattern)), re.IGNORECASE if ignore_case else 0)


class _Value:
    """A rule value compiled once: a constant, or how to fetch it per message."""

    __slots__ = ("kind", "value")

    def __init__(self, node: Node | None, raw: Any, vtype: str | None):
        kind = _vtype(raw, vtype)
        if kind == "num":
            raw, kind = compare.js_number(raw), "const"
        elif kind == "str" and not isinstance(raw, dict | list):
            raw, kind = compare.js_str("" if raw is None else raw), "const"
        elif kind in ("str", "bool", "json"):
            raw, kind = typed.evaluate(raw, kind, node, None), "const"
        elif kind == "literal":
            kind = "const"
        elif kind == "msg":
            raw = compile_path(str(raw))
        self.kind, self.value = kind, raw

    def get(self, node: Switch, msg: dict) -> Any:
        kind = self.kind
        if kind == "const":
            return self.value
        if kind == "msg":
            try:
                return lookup(msg, self.value)
            except ParentMissing:
                return MISSING
        if kind == "prev":
            return node._previous
        return typed.evaluate(self.value, kind, node, msg)  # flow, global, env, jsonata


class Switch(Node):
    type = "switch"
    summary = "Route messages by rules on a property (Node-RED operators, JavaScript comparisons)"
    auto_done = False  # Node-RED's switch never calls done: complete nodes do not see it
    schema = {
        "property": Field("str", "what to test: a msg path, flow.<key>, global.<key> (or an expression, see property_type)",
                          default="payload"),
        "property_type": Field("str", "msg (a flow./global. prefix also reads context), flow, global, env or jsonata",
                               choices=PROPERTY_TYPES, default="msg"),
        "rules": Field("list", "rules, one output each", item=RULE, required=True),
        "check_all": Field("bool", "send to every matching rule's output; false: only the first", default=True),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return [str(r.get("output") or i) if isinstance(r, dict) else str(i)
                for i, r in enumerate(config.get("rules") or [])]

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list = []
        ptype = config.get("property_type", "msg")
        prop = config.get("property", "payload")
        if ptype == "jsonata":
            from ..jsonata import check as jcheck

            err = jcheck(str(prop))
            if err:
                problems.append((("property",), err))
        elif ptype in ("msg", "flow", "global"):
            try:
                split_target(prop) if ptype == "msg" else compile_path(prop, strip_msg=False)
            except PathError as e:
                problems.append((("property",), str(e)))
        seen: dict[str, int] = {}
        names = cls.output_names(config)
        for i, rule in enumerate(config["rules"]):
            problems.extend(cls._check_rule(i, rule))
            name = names[i]
            if name in seen:
                problems.append((("rules", i, "output") if rule.get("output") else ("rules", i),
                                 f"output name {name!r} is already used by rule {seen[name]}"))
            seen.setdefault(name, i)
        return problems

    @classmethod
    def _check_rule(cls, i: int, rule: dict) -> list:
        op = rule["op"]
        out: list = []
        for key in ("value", "value2"):
            needed = op not in NO_VALUE and (key == "value" or op in TWO_VALUES)
            ktype = rule.get(key + "_type")
            if needed and key not in rule and ktype != "prev":
                out.append((("rules", i), f"a {op} rule needs '{key}'"))
                continue
            if key not in rule or not needed:
                continue
            raw = rule[key]
            if op == "istype" and key == "value":
                if _istype_name(raw) not in ISTYPES:
                    out.append((("rules", i, "value"), f"istype checks one of {', '.join(ISTYPES)}"))
                continue
            if op == "jsonata_exp" and key == "value":
                ktype = "jsonata"
            if op == "regex" and key == "value" and _vtype(raw, ktype) in ("str", "num", "literal"):
                try:
                    compile_regex(raw, False)
                except re.error as e:
                    out.append((("rules", i, "value"), f"invalid regular expression: {e}"))
                continue
            vt = _vtype(raw, ktype)
            try:
                if vt == "jsonata":
                    from ..jsonata import check as jcheck

                    err = jcheck(str(raw))
                    if err:
                        out.append((("rules", i, key), err))
                elif vt == "msg":
                    compile_path(str(raw))
                elif vt == "json" and isinstance(raw, str):
                    typed.evaluate(raw, "json", None, None)
            except (PathError, ParseError) as e:
                out.append((("rules", i, key), str(e)))
        if rule.get("case_insensitive") and op != "regex":
            out.append((("rules", i, "case_insensitive"), "case_insensitive applies to regex rules only"))
        return out

    def setup(self) -> None:
        cfg = self.config
        self._ptype = cfg["property_type"]
        prop = cfg["property"]
        if self._ptype == "msg":
            self._ptype, path = split_target(prop)
            self._prop: Any = path if self._ptype == "msg" else ".".join(map(str, path))
        else:
            self._prop = prop
        self._check_all = cfg["check_all"]
        self._previous: Any = None  # Node-RED's previousValue starts as null
        self._rules = [self._compile(rule) for rule in cfg["rules"]]
        self._needs_count = any(r["op"] == "tail" for r in cfg["rules"])
        self._pending: dict[Any, dict] = {}

    def _compile(self, rule: dict) -> tuple:
        op = rule["op"]
        v1 = v2 = None
        regex = None
        if op == "istype":
            v1 = _istype_name(rule["value"])
        elif op == "jsonata_exp":
            from ..jsonata import compile_expr

            v1 = (str(rule["value"]), compile_expr(str(rule["value"])))
        elif op not in NO_VALUE:
            v1 = _Value(self, rule.get("value"), rule.get("value_type"))
            if op in TWO_VALUES:
                v2 = _Value(self, rule.get("value2"), rule.get("value2_type"))
            if op == "regex" and v1.kind == "const":
                regex = compile_regex(v1.value, rule["case_insensitive"])
        return op, v1, v2, regex, rule["case_insensitive"]

    # ---- per message ------------------------------------------------------------------------
    def on_input(self, msg: dict):
        parts = msg.get("parts")
        if self._needs_count and isinstance(parts, dict) and "id" in parts and "index" in parts:
            return self._hold(msg, parts)
        return self._route(msg, None)

    def _hold(self, msg: dict, parts: dict):
        """``tail`` needs the group's size: keep its messages until the count is known and all came."""
        group = self._pending.setdefault(parts["id"], {"count": None, "msgs": []})
        group["msgs"].append(msg)
        if "count" in parts:
            group["count"] = parts["count"]
        if group["count"] is None or len(group["msgs"]) < group["count"]:
            return None
        del self._pending[parts["id"]]
        for m in group["msgs"]:
            try:
                self.send(self._route(m, group["count"]))
            except Exception as e:  # one bad message must not lose the rest of the group
                self.error(e, m)
        return None

    def _property(self, msg: dict) -> Any:
        ptype = self._ptype
        if ptype == "msg":
            try:
                return lookup(msg, self._prop)
            except ParentMissing:
                return MISSING  # as Node-RED: a missing parent reads as undefined
        if ptype == "jsonata":
            try:
                return typed.evaluate(self._prop, "jsonata", self, msg)
            except ParseError as e:
                self.warn(str(e))
                raise _Drop from None
        return typed.evaluate(self._prop, ptype, self, msg)

    def _route(self, msg: dict, count: int | None):
        try:
            a = self._property(msg)
        except _Drop:
            return None
        onward: list = []
        matched_any = False
        else_flag = True
        for op, v1, v2, regex, icase in self._rules:
            if op == "else":
                test = else_flag
                else_flag = True
            else:
                test = self._test(op, a, v1, v2, regex, icase, msg, count)
            if test:
                onward.append(msg)
                matched_any = True
                else_flag = False
                if not self._check_all:
                    break
            else:
                onward.append(None)
        self._previous = a
        return onward if matched_any else None

    def _test(self, op, a, v1, v2, regex, icase, msg, count) -> bool:
        if op in NO_VALUE:
            return _UNARY[op](a)
        if op == "istype":
            return _istype(a, v1)
        if op == "jsonata_exp":
            return self._jsonata(v1, msg, count) is True
        b = v1.get(self, msg)
        if op in COMPARISONS:
            return _BINARY[op](a, b)
        if op == "btwn":
            c = v2.get(self, msg)
            return (compare.gte(a, b) and compare.lte(a, c)) or (compare.lte(a, b) and compare.gte(a, c))
        if op == "cont":
            return compare.js_str(b) in compare.js_str(a)
        if op == "regex":
            if regex is None:
                try:
                    regex = compile_regex(b, icase)
                except re.error as e:
                    raise ParseError(f"invalid regular expression {b!r}: {e}") from None
            return regex.search(compare.js_str(a)) is not None
        if op == "hask":
            return _has_key(a, b)
        parts = msg.get("parts") if isinstance(msg.get("parts"), dict) else {}
        index = parts.get("index", MISSING)
        if op == "head":
            return compare.lt(index, compare.js_number(b))
        if op == "tail":
            total = parts.get("count", MISSING) if count is None else count
            return compare.lte(compare.js_number(total) - compare.js_number(b), index)
        if op == "index":
            c = v2.get(self, msg)
            return compare.lte(compare.js_number(b), index) and compare.lte(index, compare.js_number(c))
        raise AssertionError(op)  # pragma: no cover - check() allows only known operators

    def _jsonata(self, expr: tuple, msg: dict, count: int | None) -> Any:
        parts = msg.get("parts") if isinstance(msg.get("parts"), dict) else {}
        bindings = {"I": parts.get("index"), "N": count if count is not None else parts.get("count")}
        return _eval_jsonata(self, expr, msg, bindings)


class _Drop(Exception):
    """Internal: the property could not be evaluated and the message is dropped (Node-RED warns)."""


def _eval_jsonata(node: Node, expr: tuple, msg: dict, bindings: dict) -> Any:
    """As :func:`meterflow.jsonata.evaluate`, plus variable bindings ($I, $N)."""
    import os

    from ..jsonata import _LEGACY

    text, compiled = expr
    data = {"msg": msg} if _LEGACY.search(text) else msg
    compiled.register_lambda("flowContext", lambda key, store=None: node.flow_context.get(key))
    compiled.register_lambda("globalContext", lambda key, store=None: node.global_context.get(key))
    compiled.register_lambda("env", lambda name: os.environ.get(name, ""))
    try:
        return compiled.evaluate(data, bindings)
    except Exception as e:
        raise ParseError(f"Invalid JSONata expression: {e}") from None


def _empty(a: Any) -> bool:
    if isinstance(a, str | list | bytes | bytearray | dict):
        return len(a) == 0
    return False


def _nempty(a: Any) -> bool:
    if isinstance(a, str | list | bytes | bytearray | dict):
        return len(a) != 0
    return False


_UNARY = {
    "true": lambda a: a is True,
    "false": lambda a: a is False,
    "null": lambda a: a is None or a is MISSING,
    "nnull": lambda a: a is not None and a is not MISSING,
    "empty": _empty,
    "nempty": _nempty,
}

_BINARY = {
    "eq": compare.loose_eq,
    "neq": lambda a, b: not compare.loose_eq(a, b),
    "lt": compare.lt,
    "lte": compare.lte,
    "gt": compare.gt,
    "gte": compare.gte,
}


def _istype_name(raw: Any) -> Any:
    return "null" if raw is None else raw  # an unquoted YAML null names the type too


def _istype(a: Any, name: str) -> bool:
    if name == "array":
        return isinstance(a, list)
    if name == "buffer":
        return isinstance(a, bytes | bytearray)
    if name == "json":
        return compare.json_parses(a)
    if name == "null":
        return a is None
    if name == "number":
        return compare.js_type(a) == "number" and a == a  # NaN is not; Infinity is
    if name == "undefined":
        return a is MISSING
    if name == "object":
        return isinstance(a, dict)
    return compare.js_type(a) == name  # string, boolean


def _has_key(a: Any, b: Any) -> bool:
    """``a.hasOwnProperty(b + "")`` for a non-object ``b`` and a non-null ``a``."""
    if a is None or a is MISSING or compare.js_type(b) == "object" or b is None:
        return False
    key = compare.js_str(b)
    if isinstance(a, dict):
        return key in a
    if isinstance(a, list | str | bytes | bytearray):
        return key == "length" or (key.isdigit() and (key == "0" or not key.startswith("0")) and int(key) < len(a))
    return False


NODE_TYPES = [Switch]
