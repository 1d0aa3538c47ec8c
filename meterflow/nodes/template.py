"""template: build text (or JSON/YAML) from a mustache template and set it on the message.

::

    - id: body
      type: template
      field: payload                 # msg path, or flow.<key> / global.<key>
      syntax: mustache               # or plain: the template text as it is
      output: json                   # str (default), json or yaml: parse the result
      template: |
        {"esiid": "{{payload.esiid}}", "requestor": "{{env.SMT_USER}}",
         "last": "{{flow.lastRead}}", "note": "{{{payload.note}}}"}

Rendering follows Node-RED (mustache.js): ``{{x}}`` is HTML-escaped (``& < > " ' / ` =``
become entities, so ``a/b`` gives ``a&#x2F;b``), ``{{{x}}}`` and ``{{& x}}`` are raw.  A
name is looked up in the message first (``payload.a``, ``topic``), then as ``env.NAME``,
``flow.key`` or ``global.key`` (``flow[store].key`` too); a missing name renders as "".
Values print as JavaScript does (``true``, ``5`` for 5.0, ``1,2`` for a list,
``[object Object]`` for a mapping).  Sections ``{{#list}}…{{/list}}``, inverted sections
and ``{{=<% %>=}}`` work; partials render nothing.  With ``output: json`` string values
have backslashes and control characters escaped (not quotes) before the text is parsed.
When ``template`` is empty, ``msg.template`` is used.  Syntax errors are reported by
``meterflow check``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from .. import compare
from ..errors import ParseError
from ..message import MISSING, PathError, set_path
from ..node import Node
from ..schema import Field
from .change import split_target

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "/": "&#x2F;",
             "`": "&#x60;", "=": "&#x3D;"}
_ESCAPE = re.compile(r"[&<>\"'`=/]")
_CONTEXT_NAME = re.compile(r"(flow|global)(?:\[(\w+)\])?\.(.+)$")
_JSON_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f", "\b": "\\b"})


def html_escape(text: str) -> str:
    """mustache.js's escapeHtml."""
    return _ESCAPE.sub(lambda m: _ENTITIES[m.group(0)], text)


@lru_cache(maxsize=256)
def parse(template: str) -> tuple:
    """The template as a tree: ``("t", text)``, ``("v", name, escape)``, ``("s", name, children, inverted)``.

    Raises ParseError for unclosed tags and mismatched sections."""
    from chevron.tokenizer import ChevronError, tokenize

    root: list = []
    stack: list[tuple[str, list]] = [("", root)]
    try:
        for tag, key in tokenize(template):
            out = stack[-1][1]
            if tag == "literal":
                out.append(("t", key))
            elif tag in ("variable", "no escape"):
                out.append(("v", key, tag == "variable"))
            elif tag in ("section", "inverted section"):
                children: list = []
                out.append(("s", key, children, tag == "inverted section"))
                stack.append((key, children))
            elif tag == "end":
                stack.pop()
            # comments, partials and delimiter changes produce no output
    except ChevronError as e:
        text = " ".join(str(e).split())
        raise ParseError(f"invalid mustache template: {text}") from None
    return _freeze(root)


def _freeze(nodes: list) -> tuple:
    return tuple(("s", n[1], _freeze(n[2]), n[3]) if n[0] == "s" else n for n in nodes)


def _child(obj: Any, seg: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(seg, MISSING)
    if isinstance(obj, list | str | bytes):
        if seg == "length":
            return len(obj)
        if seg.isdigit() and int(seg) < len(obj):
            return obj[int(seg)]
    return MISSING


class _Renderer:
    """One rendering: the view stack plus Node-RED's env/flow/global fallbacks."""

    def __init__(self, node: Node, msg: dict, json_strings: bool):
        self.node = node
        self.stack: list = [msg]
        self.json_strings = json_strings

    def lookup(self, name: str) -> Any:
        if name == ".":
            value = self.stack[-1]
        else:
            value = MISSING
            segs = name.split(".")
            for view in reversed(self.stack):
                v = view
                for seg in segs:
                    v = _child(v, seg)
                    if v is MISSING:
                        break
                if v is not MISSING:
                    value = v
                    break
            if value is MISSING:
                value = self._fallback(name)
        if self.json_strings and isinstance(value, str):
            value = value.translate(_JSON_ESCAPES)
        return value

    def _fallback(self, name: str) -> Any:
        if name.startswith("env.") and len(name) > 4:
            from .function import env_value

            v = env_value(self.node, name[4:])
            return MISSING if v is None else v
        m = _CONTEXT_NAME.match(name)
        if m:
            ctx = self.node.flow_context if m.group(1) == "flow" else self.node.global_context
            v = ctx.get(m.group(3))
            return MISSING if v is None else v
        return MISSING

    def render(self, nodes: tuple) -> str:
        out: list[str] = []
        for n in nodes:
            kind = n[0]
            if kind == "t":
                out.append(n[1])
            elif kind == "v":
                value = self.lookup(n[1])
                if value is None or value is MISSING:
                    continue
                text = compare.js_str(value)
                out.append(html_escape(text) if n[2] else text)
            else:
                out.append(self._section(n[1], n[2], n[3]))
        return "".join(out)

    def _section(self, name: str, children: tuple, inverted: bool) -> str:
        value = self.lookup(name)
        if inverted:
            return self.render(children) if not compare.truthy(value) or value == [] else ""
        if not compare.truthy(value):
            return ""
        if isinstance(value, list):
            return "".join(self._with(item, children) for item in value)
        if value is True:
            return self.render(children)
        return self._with(value, children)

    def _with(self, view: Any, children: tuple) -> str:
        self.stack.append(view)
        try:
            return self.render(children)
        finally:
            self.stack.pop()


def render(node: Node, template: str, msg: dict, json_strings: bool = False) -> str:
    """Render ``template`` for ``msg`` as Node-RED's template node does."""
    return _Renderer(node, msg, json_strings).render(parse(template))


class Template(Node):
    type = "template"
    summary = "Build text from a mustache template (msg, env, flow and global values) and set it on msg"
    schema = {
        "template": Field("str", "the template text; empty: use msg.template", default=""),
        "field": Field("str", "where the result goes: a msg path, flow.<key> or global.<key>", default="payload"),
        "syntax": Field("str", "mustache, or plain for the text as it is (Node-RED's 'syntax')",
                        choices=("mustache", "plain"), default="mustache"),
        "output": Field("str", "str: the text; json/yaml: parse the text into data", choices=("str", "json", "yaml"),
                        default="str"),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list = []
        try:
            split_target(config.get("field") or "payload")
        except PathError as e:
            problems.append((("field",), str(e)))
        template = config.get("template") or ""
        if config.get("syntax", "mustache") == "mustache":
            try:
                parse(template)
            except ParseError as e:
                problems.append((("template",), str(e)))
        elif template and config.get("output") in ("json", "yaml"):
            try:
                _parse_output(template, config["output"])
            except ParseError as e:
                problems.append((("template",), str(e)))
        return problems

    def setup(self) -> None:
        cfg = self.config
        self._scope, self._path = split_target(cfg["field"])
        self._mustache = cfg["syntax"] == "mustache"
        self._output = cfg["output"]
        self._template = cfg["template"]
        if self._mustache and self._template:
            parse(self._template)  # validated by check(); parsed once and cached

    def on_input(self, msg: dict):
        template = self._template
        if not template:
            template = msg.get("template")
            if not isinstance(template, str):
                template = "" if template is None else compare.js_str(template)
        if self._mustache:
            text = render(self, template, msg, json_strings=self._output == "json")
        else:
            text = template
        value = _parse_output(text, self._output) if self._output != "str" else text
        if self._scope == "msg":
            if not set_path(msg, self._path, value):
                self.warn(f"cannot set property of non-object type: {'.'.join(map(str, self._path))}")
        else:
            ctx = self.flow_context if self._scope == "flow" else self.global_context
            ctx.set(".".join(map(str, self._path)), value)
        return msg


def _parse_output(text: str, output: str) -> Any:
    if output == "json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise ParseError(f"template result is not valid JSON: {e}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParseError(f"template result is not valid YAML: {' '.join(str(e).split())}") from None


NODE_TYPES = [Template]
