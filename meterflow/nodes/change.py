"""change: set, change, delete or move message and context properties.

This is the example to read when writing a node type: a ``type`` and ``summary``, a
``schema`` (checked by ``meterflow check``, printed by ``meterflow nodes``), extra
validation in ``check``, work done once in ``setup`` and a small ``on_input``.

Rules, applied in order::

    rules:
      - set: payload.odrRead.registeredRead     # msg.<path>, flow.<key> or global.<key>
        to: 5
      - set: headers.content-type
        to: application/json
      - set: flow.readrequested
        to: 1
      - set: payload
        to: payload.value          # to_type: msg|flow|global|str|num|bool|json|bin|date|env|jsonata
        to_type: msg
      - change: payload
        from: "PEN"                # from_type: str|re|num|bool|msg|flow|global|env
        to: pending
      - delete: headers
      - move: payload.raw
        to: raw

Semantics follow Node-RED: setting from a missing msg property deletes the target;
reading beneath a missing parent skips the rule; ``change`` on a string replaces an
exact whole-value match with the typed ``to``, otherwise every occurrence as text.
"""

from __future__ import annotations

import re

from .. import typed
from ..errors import ParseError
from ..message import MISSING, ParentMissing, PathError, clone, compile_path, lookup, set_path
from ..node import Node
from ..schema import Field

ACTIONS = ("set", "change", "delete", "move")
TO_TYPES = ("str", "num", "bool", "json", "bin", "date", "msg", "flow", "global", "env", "jsonata")
FROM_TYPES = ("str", "re", "num", "bool", "msg", "flow", "global", "env")

RULE = Field("map", fields={
    "set": Field("str", "target to set"),
    "change": Field("str", "target whose value to search and replace"),
    "delete": Field("str", "target to delete"),
    "move": Field("str", "target to move (to 'to')"),
    "to": Field("any", "the new value (set, change) or the destination (move)"),
    "to_type": Field("str", "how to read 'to' (default: str for text, the value itself otherwise)", choices=TO_TYPES),
    "from": Field("any", "what to replace (change)"),
    "from_type": Field("str", "how to read 'from'", choices=FROM_TYPES, default="str"),
    "deep_copy": Field("bool", "copy the value instead of sharing it (to_type msg/flow/global)", default=False),
})


def split_target(target: str) -> tuple[str, tuple]:
    """``flow.x`` -> ("flow", path); ``global.x``; ``msg.x`` or ``x`` -> ("msg", path)."""
    for scope in ("flow", "global"):
        if target.startswith(scope + "."):
            return scope, compile_path(target[len(scope) + 1:], strip_msg=False)
    return "msg", compile_path(target)


def _action(rule: dict) -> str | None:
    found = [a for a in ACTIONS if a in rule]
    return found[0] if len(found) == 1 else None


def _to_type(rule: dict) -> str:
    if "to_type" in rule:
        return rule["to_type"]
    return "str" if isinstance(rule.get("to"), str) else "literal"


class Change(Node):
    type = "change"
    summary = "Set, change, delete or move message, flow and global properties"
    schema = {"rules": Field("list", "rules applied in order", item=RULE, required=True)}

    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        for i, rule in enumerate(config["rules"]):
            found = [a for a in ACTIONS if a in rule]
            if len(found) != 1:
                problems.append((("rules", i), "each rule has exactly one of set, change, delete, move"))
                continue
            action = found[0]
            try:
                split_target(str(rule[action]))
            except PathError as e:
                problems.append((("rules", i, action), str(e)))
            if action in ("set", "change", "move") and "to" not in rule:
                problems.append((("rules", i), f"a {action} rule needs 'to'"))
            if action == "change" and "from" not in rule:
                problems.append((("rules", i), "a change rule needs 'from'"))
            if action == "move" and rule.get("to_type", "msg") not in ("msg", "flow", "global"):
                problems.append((("rules", i, "to_type"), "a move goes to msg, flow or global"))
            tt = _to_type(rule)
            if tt == "jsonata":
                from ..jsonata import check as jcheck

                err = jcheck(str(rule["to"]))
                if err:
                    problems.append((("rules", i, "to"), err))
            if tt == "json" and isinstance(rule.get("to"), str):
                try:
                    typed.evaluate(rule["to"], "json", None, None)
                except ParseError as e:
                    problems.append((("rules", i, "to"), str(e)))
            if tt in ("msg",) and isinstance(rule.get("to"), str):
                try:
                    compile_path(rule["to"])
                except PathError as e:
                    problems.append((("rules", i, "to"), str(e)))
            if action == "change" and rule.get("from_type") == "re":
                try:
                    re.compile(str(rule["from"]))
                except re.error as e:
                    problems.append((("rules", i, "from"), f"invalid regular expression: {e}"))
        return problems

    def setup(self) -> None:
        self._rules = [self._compile(rule) for rule in self.config["rules"]]

    def _compile(self, rule: dict):
        action = _action(rule)
        scope, path = split_target(str(rule[action]))
        tt = _to_type(rule)
        to = rule.get("to")
        if tt in ("num", "bool") or (tt == "json" and isinstance(to, str)):
            to, tt = typed.evaluate(to, tt, self, None), "literal"  # constant: evaluate once
        elif tt == "str":
            to, tt = typed.evaluate(to, "str", self, None), "literal"
        if tt == "msg":
            to = compile_path(str(to))
        from_re = None
        if action == "change":
            ft = rule.get("from_type", "str")
            if ft == "re":
                from_re = re.compile(str(rule["from"]))
            elif ft in ("str", "num", "bool") and not isinstance(rule["from"], str | int | float | bool):
                ft = "literal"
        return action, scope, path, tt, to, bool(rule.get("deep_copy")), rule, from_re

    def _value(self, tt: str, to, msg: dict, deep: bool):
        if tt == "literal":
            return clone({"v": to})["v"] if isinstance(to, dict | list) else to
        if tt == "msg":
            v = lookup(msg, to)  # ParentMissing propagates: the rule is skipped
        else:
            v = typed.evaluate(to, tt, self, msg)
        return clone({"v": v})["v"] if deep and isinstance(v, dict | list) else v

    def _target_obj(self, scope: str, msg: dict):
        if scope == "msg":
            return msg
        ctx = self.flow_context if scope == "flow" else self.global_context
        return ctx

    def on_input(self, msg: dict):
        for action, scope, path, tt, to, deep, rule, from_re in self._rules:
            try:
                self._apply(msg, action, scope, path, tt, to, deep, rule, from_re)
            except ParentMissing:
                continue  # as Node-RED: reading beneath a missing parent skips the rule
            except ParseError as e:
                if action != "change":
                    raise  # a failing set (e.g. JSONata) drops the message
                self.error(e, msg)  # Node-RED reports a bad 'from' and still sends the message on
        return msg

    def _apply(self, msg, action, scope, path, tt, to, deep, rule, from_re) -> None:
        if action == "set":
            value = self._value(tt, to, msg, deep)
            self._set(scope, path, value, msg)
        elif action == "delete":
            self._set(scope, path, MISSING, msg)
        elif action == "move":
            dest_scope = rule.get("to_type", "msg")
            current = self._get(scope, path, msg)
            if current is MISSING:
                return
            self._set(scope, path, MISSING, msg)
            if isinstance(to, tuple):  # already compiled (to_type: msg)
                dest = to
            else:
                dest = compile_path(str(to)) if dest_scope == "msg" else compile_path(str(to), strip_msg=False)
            self._set(dest_scope, dest, current, msg)
        else:
            current = self._get(scope, path, msg)
            if current is MISSING:
                return
            new = self._replace(current, rule, from_re, tt, to, msg)
            if new is not current:
                self._set(scope, path, new, msg)

    def _get(self, scope, path, msg):
        if scope == "msg":
            return lookup(msg, path)
        ctx = self._target_obj(scope, msg)
        v = ctx.get(".".join(map(str, path)))
        return MISSING if v is None else v

    def _set(self, scope, path, value, msg) -> None:
        if scope == "msg":
            if type(path) is tuple and len(path) == 1 and type(path[0]) is str and value is not MISSING:
                msg[path[0]] = value  # the common case, without the walk
                return
            if not set_path(msg, path, value):
                self.warn(f"cannot set property of non-object type: {'.'.join(map(str, path))}")
            return
        ctx = self._target_obj(scope, msg)
        ctx.set(".".join(map(str, path)), None if value is MISSING else value)

    def _replace(self, current, rule, from_re, tt, to, msg):
        ft = rule.get("from_type", "str")
        frm = rule["from"]
        if ft in ("msg", "flow", "global", "env"):
            frm = typed.evaluate(frm, ft, self, msg)
            if frm is MISSING or frm is None:
                raise ParseError(f"invalid 'from' property: {rule['from']!r} is not set")
        to_value = self._value(tt, to, msg, False)
        if isinstance(current, str):
            if from_re is None and ft != "re" and isinstance(frm, str | int | float | bool) and current == _text(frm):
                return to_value
            pattern = from_re or re.compile(re.escape(_text(frm)))
            result = pattern.sub(lambda m: _text(to_value), current)
            if rule.get("to_type") == "bool" and result in ("true", "false"):
                return result == "true"
            return result
        if isinstance(current, bool | int | float) and not isinstance(frm, dict | list):
            if current == frm or (isinstance(frm, str) and _text(current) == frm):
                return to_value
        return current


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


NODE_TYPES = [Change]
