"""meterflow flow YAML -> Node-RED ``flows.json``, for the Node-RED editor.

One tab named after the flow holds every node.  Each meterflow node becomes the Node-RED
node that does the same (docs/node-red.md): core types where they exist (``tls-request``
-> ``http request``, so a stock Node-RED loads it), the contrib type where the original
used one (e-mail, moment, credentials, Home Assistant).  Node ids and editor positions
come from the ``# nodered: <id> @x,y`` comments ``meterflow import`` wrote (or a
``nodered_id`` field); nodes without them keep their meterflow id and get a simple
left-to-right layout.

Where Node-RED cannot say everything the meterflow node says (a catch node's error
kinds, a retry policy, a credential-store reference, a node type Node-RED does not
have), the node's notes (``info``) end with a ``meterflow`` block holding the meterflow
node and a fingerprint of the Node-RED settings written.  ``meterflow import`` restores
the node from the block as long as the settings still match; once they are edited in
Node-RED, it maps the edited settings instead.  meterflow-only node types are written
as stand-ins (a function node that warns, or a comment for a config node).

Secrets are never written: ``${creds:...}`` references stay in the block only, and
``${NAME}`` / ``${NAME:-default}`` environment references are resolved from the
environment (Node-RED does not read the ``:-`` form).  The inserted "msg.headers to
request_headers" change nodes of an import are folded back into the request node.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .importer import (
    HA_DATA_ADAPTER_NAME,
    HEADERS_ADAPTER_NAME,
    HEADERS_ADAPTER_RULES,
    Importer,
    MfNode,
    block_hash,
    node_data,
    seconds,
)

NR_COMMENT = re.compile(r"#\s*nodered:\s*(\S+)(?:\s+@(-?[\d.]+),(-?[\d.]+))?")
STAND_IN_CODE = ('// meterflow "{type}" node: it runs in meterflow only (its settings are in the notes).\n'
                 'node.warn("meterflow {type} node: not available in Node-RED");\nreturn null;')


@dataclass
class ExportResult:
    flows: list[dict]
    notes: list[str] = field(default_factory=list)

    def json(self) -> str:
        return json.dumps(self.flows, indent=4, ensure_ascii=False) + "\n"


@dataclass
class _Node:
    id: str
    type: str
    name: str
    config: dict  # raw YAML fields (unsubstituted), without id/type/name/wires/disabled/info
    wires: list[list[str]]
    disabled: bool
    info: str
    is_config: bool
    cls: Any
    raw_disabled: Any = False
    quoted: list = field(default_factory=list)  # paths of quoted ${...} values (their quotes keep them text)
    nodered_id: str | None = None
    pos: tuple | None = None


def _unescape(v: Any, env) -> Any:
    """YAML text -> the text Node-RED should see: ``$${`` is a literal ``${``; env references resolved."""
    if isinstance(v, str):
        if "${" not in v:
            return v
        from ..substitute import Unresolved, substitute

        try:
            return substitute(v, env, {}, typed=False)
        except Unresolved:
            return v.replace("$${", "${")
    if isinstance(v, dict):
        return {k: _unescape(x, env) for k, x in v.items()}
    if isinstance(v, list):
        return [_unescape(x, env) for x in v]
    return v


def _jsvalue(v: Any) -> tuple[str, str]:
    """A meterflow literal -> Node-RED (value, type)."""
    if isinstance(v, bool):
        return ("true" if v else "false"), "bool"
    if isinstance(v, int | float):
        return json.dumps(v), "num"
    if isinstance(v, dict | list):
        return json.dumps(v), "json"
    return ("" if v is None else str(v)), "str"


def _typed(v: Any, vtype: str | None) -> tuple[str, str]:
    if vtype in (None, "", "literal"):
        return _jsvalue(v)
    if isinstance(v, dict | list):
        return json.dumps(v), vtype
    return ("" if v is None else str(v) if not isinstance(v, bool) else ("true" if v else "false")), vtype


def _secs(v: Any) -> float:
    from ..schema import parse_duration

    try:
        return parse_duration(v)
    except (ValueError, TypeError):
        return 0.0


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _split(target: str) -> tuple[str, str]:
    """flow.x -> (x, flow); payload -> (payload, msg)."""
    for scope in ("flow", "global"):
        if target.startswith(scope + "."):
            return target[len(scope) + 1:], scope
    return (target[4:] if target.startswith("msg.") else target), "msg"


class Exporter:
    def __init__(self, path: str, env=None):
        self.path_ = path
        self.env = dict(os.environ) if env is None else env
        self.notes: list[str] = []

    # ---- reading the flow ---------------------------------------------------------------------------
    def read(self) -> tuple[str, list[_Node]]:
        from ..flowfile import RESERVED, load_flow
        from ..schema import defaults

        spec = load_flow(self.path_, env=self.env, for_run=False)
        if not spec.nodes and spec.errors:  # unreadable; other problems do not stop an export
            raise ValueError("cannot export this flow:\n" + "\n".join(map(str, spec.errors)))
        texts: dict[str, list[str]] = {}
        out = []
        for ns in spec.nodes:
            raw = ns.doc.data
            for p in ns.path:
                raw = raw[p]
            config = {k: v for k, v in raw.items() if k not in RESERVED and k != "nodered_id"}
            node = _Node(ns.id, ns.type, ns.name, config, ns.wires, ns.disabled,
                         raw.get("info") if isinstance(raw.get("info"), str) else "", ns.is_config, ns.cls)
            if ns.cls is not None:
                node.defaults = defaults(ns.cls.schema, config)  # type: ignore[attr-defined]
            node.raw_disabled = raw.get("disabled", False)
            n = len(ns.path)
            for q in sorted(ns.doc.quoted, key=str):
                if q[:n] == ns.path and len(q) > n and q[n] not in RESERVED:
                    v = raw
                    for p in q[n:]:
                        v = v[p]
                    if isinstance(v, str) and "${" in v:
                        node.quoted.append(list(q[n:]))
            if isinstance(raw.get("nodered_id"), str):
                node.nodered_id = raw["nodered_id"]
            lines = texts.get(ns.doc.file)
            if lines is None:
                try:
                    with open(ns.doc.file, encoding="utf-8") as f:
                        lines = texts[ns.doc.file] = f.read().splitlines()
                except OSError:
                    lines = texts[ns.doc.file] = []
            line_no = ns.doc.mark(ns.path + ("id",)).line
            if 0 < line_no <= len(lines):
                m = NR_COMMENT.search(lines[line_no - 1])
                if m:
                    node.nodered_id = node.nodered_id or m.group(1)
                    if m.group(2) is not None:
                        node.pos = (_coord(m.group(2)), _coord(m.group(3)))
            out.append(node)
        return spec.name, out

    # ---- writing ------------------------------------------------------------------------------------
    def run(self) -> ExportResult:
        name, nodes = self.read()
        by_id = self.by_mf = {n.id: n for n in nodes}
        folded = self.fold_adapters(nodes, by_id)
        nodes = [n for n in nodes if n.id not in folded]
        self.nr_id = {n.id: (n.nodered_id or n.id) for n in nodes}
        for adapter, target in folded.items():
            self.nr_id[adapter] = self.nr_id[target]
        if len(set(self.nr_id[n.id] for n in nodes)) != len(nodes):
            self.nr_id = {n.id: n.id for n in nodes} | {a: t for a, t in folded.items()}
            self.notes.append("Node-RED ids in the comments repeat; the meterflow ids are used instead")
        tab_id = hashlib.sha256(f"meterflow:{name}".encode()).hexdigest()[:16]
        flows: list[dict] = [{"id": tab_id, "type": "tab", "label": name, "disabled": False, "info": "", "env": []}]
        layout = self.layout(nodes)
        made: list[tuple[_Node, dict]] = []
        for n in nodes:
            nr = self.convert(n)
            nr["id"] = self.nr_id[n.id]
            if n.name and "name" not in nr:
                nr["name"] = n.name
            stand_in_config = n.is_config and nr["type"] == "comment"
            outputs = nr.pop("_outputs", None)
            if not n.is_config or stand_in_config:
                nr["z"] = tab_id
                nr["x"], nr["y"] = n.pos or layout[n.id]
                nr["wires"] = [] if stand_in_config else self.wires(n, outputs)
            if n.disabled:
                nr["d"] = True
            head = {"id": nr.pop("id"), "type": nr.pop("type")}
            if "z" in nr:
                head["z"] = nr.pop("z")
            if "name" in nr:
                head["name"] = nr.pop("name")
            nr = {**head, **nr}
            made.append((n, nr))
        # Which nodes Node-RED cannot carry in full: check by importing each one back.
        keep = {nr["id"]: n.id for n, nr in made}
        imp = Importer([nr for _, nr in made] + flows, name=name, keep_ids=keep)
        imp.assign_ids([nr for _, nr in made])
        imp.by_id = {nr["id"]: nr for _, nr in made}
        imp.restored = {}
        for n in nodes:  # e-mail nodes map back to the smtp-server they name, not to a new one
            if n.type == "smtp-server":
                s = _unescape(getattr(n, "defaults", n.config), self.env)
                sec = s.get("security", "implicit_tls")
                port = s.get("port") or {"implicit_tls": 465, "starttls": 587}.get(sec, 25)
                imp.generated[(s.get("host"), port, sec == "implicit_tls", s.get("verify", True))] = MfNode(n.id, n.type)
        for n, nr in made:
            if not self.lossless(imp, n, nr):
                self.add_block(n, nr)
            elif n.info:
                nr["info"] = _unescape(n.info, self.env)
            flows.append(nr)
        return ExportResult(flows, self.notes)

    def fold_adapters(self, nodes: list[_Node], by_id: dict) -> dict[str, str]:
        """Adapter change nodes an import put before a node -> {adapter id: that node's id}.

        "msg.headers to request_headers" before a tls-request goes (Node-RED's http request
        reads msg.headers itself); "service data (JSONata)" before an ha-service goes back
        into the call-service node's data."""
        out = {}
        self.ha_data: dict[str, str] = {}
        for n in nodes:
            if n.type != "change":
                continue
            targets = [t for w in n.wires for t in w]
            target = by_id.get(targets[0]) if len(targets) == 1 else None
            if target is None:
                continue
            rules = n.config.get("rules")
            if n.name == HEADERS_ADAPTER_NAME and rules == HEADERS_ADAPTER_RULES and target.type == "tls-request":
                out[n.id] = target.id
            elif n.name == HA_DATA_ADAPTER_NAME and target.type == "ha-service" and len(rules or []) == 1:
                m = re.fullmatch(r'\{"data": \((.*)\)\}', str(rules[0].get("to", "")), re.S)
                if rules[0].get("set") == "payload" and rules[0].get("to_type") == "jsonata" and m:
                    out[n.id] = target.id
                    self.ha_data[target.id] = m.group(1)
        for n in nodes:  # everything wired to an adapter now goes to the request itself
            n.wires = [[out.get(t, t) for t in w] for w in n.wires]
        return out

    def wires(self, n: _Node, outs: int | None) -> list[list[str]]:
        """One list per output, as Node-RED wants (an unwired output is [])."""
        wires = [[self.nr_id[t] for t in w if t in self.nr_id] for w in n.wires]
        if outs is None and n.cls is not None:
            try:
                outs = len(n.cls.output_names(getattr(n, "defaults", n.config)))
            except Exception:
                outs = None
        if outs is not None:
            wires = (wires + [[] for _ in range(outs)])[:outs]
        return wires

    def layout(self, nodes: list[_Node]) -> dict[str, tuple[int, int]]:
        """Columns by distance from the sources, rows in file order (for nodes without a position)."""
        flow_nodes = nodes
        inbound: dict[str, int] = {n.id: 0 for n in flow_nodes}
        for n in flow_nodes:
            for w in n.wires:
                for t in w:
                    if t in inbound:
                        inbound[t] += 1
        depth = {n.id: 0 for n in flow_nodes}
        for _ in range(len(flow_nodes)):
            changed = False
            for n in flow_nodes:
                for w in n.wires:
                    for t in w:
                        if t in depth and depth[t] < depth[n.id] + 1 and depth[n.id] < len(flow_nodes):
                            depth[t] = depth[n.id] + 1
                            changed = True
            if not changed:
                break
        rows: dict[int, int] = {}
        out = {}
        for n in flow_nodes:
            d = min(depth[n.id], 12)
            rows[d] = rows.get(d, 0) + 1
            out[n.id] = (120 + 200 * d, 60 * rows[d])
        return out

    def lossless(self, imp: Importer, n: _Node, nr: dict) -> bool:
        from ..flowfile import RESERVED
        from ..schema import defaults

        if isinstance(n.raw_disabled, str):
            return False  # 'disabled: ${VAR}' needs the block to come back
        if n.type in ("unsupported", "unsupported-config"):
            return True  # written back as it came; an import makes the same node of it again
        if nr.get("type") == "function" and nr.get("func", "").startswith("// meterflow \""):
            return False
        back = _map_back(imp, nr)
        if back is None or n.cls is None or back.type != n.type:
            return False
        got = node_data(MfNode(n.id, back.type, back.fields))
        want = {k: v for k, v in n.config.items() if k not in RESERVED}
        g_cfg = defaults(n.cls.schema, {k: v for k, v in got.items() if k not in ("id", "type")})
        return _norm(defaults(n.cls.schema, want)) == _norm(g_cfg)

    def add_block(self, n: _Node, nr: dict) -> None:
        block = {"meterflow": {"id": n.id, "type": n.type, "name": n.name, "fields": n.config}}
        if n.is_config:
            block["meterflow"]["config"] = True
        if isinstance(n.raw_disabled, str):
            block["meterflow"]["disabled"] = n.raw_disabled
        if n.quoted:
            block["meterflow"]["quoted"] = n.quoted
        outs = len(n.wires)
        if outs != 1:
            block["meterflow"]["outputs"] = outs
        block["hash"] = block_hash(nr)
        info = _unescape(n.info, self.env) if n.info else ""
        nr["info"] = (info + "\n\n" if info else "") + "```meterflow\n" + json.dumps(block, ensure_ascii=False) + "\n```"

    # ---- one node -------------------------------------------------------------------------------------
    def convert(self, n: _Node) -> dict:
        c = _unescape(getattr(n, "defaults", n.config), self.env)
        fn = getattr(self, "to_" + n.type.replace("-", "_"), None)
        if fn is not None:
            nr = fn(n, c)
            if nr is not None:
                return nr
        if n.is_config:
            return {"type": "comment", "name": f"meterflow config: {n.id} ({n.type})", "info": ""}
        return {"type": "function", "name": n.name or n.id, "func": STAND_IN_CODE.format(type=n.type),
                "outputs": len(n.wires), "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
                "_outputs": len(n.wires)}

    def ref(self, mf_id: Any) -> str:
        return self.nr_id.get(mf_id, mf_id) if isinstance(mf_id, str) else ""

    def to_inject(self, n: _Node, c: dict) -> dict:
        from ..nodes.inject import resolve_props

        props, extra = [], {"payload": "", "payloadType": "date", "topic": ""}
        for _, p in resolve_props(c):
            prop = str(p.get("property"))
            value, vtype = _typed(p.get("value"), p.get("type") or ("str" if isinstance(p.get("value"), str) else None))
            if vtype == "date":
                value = p.get("value") or ""
            if prop == "payload" and "payload" not in [x.get("p") for x in props]:
                props.append({"p": "payload"})
                extra["payload"], extra["payloadType"] = value, vtype
            elif prop == "topic" and vtype == "str" and "topic" not in [x.get("p") for x in props]:
                props.append({"p": "topic", "vt": "str"})
                extra["topic"] = value
            else:
                props.append({"p": prop, "v": value, "vt": vtype})
        rep = _secs(c.get("repeat") or 0)
        return {"type": "inject", "props": props, "repeat": _num_text(rep) if rep else "",
                "crontab": "" if rep else str(c.get("cron") or ""), "once": bool(c.get("once")),
                "onceDelay": _secs(c.get("once_delay", 0.1)), **extra}

    def to_debug(self, n: _Node, c: dict) -> dict:
        prop = c.get("property") or "payload"
        full = prop == "msg"
        return {"type": "debug", "active": c.get("active", True), "tosidebar": True, "console": False,
                "tostatus": False, "complete": "true" if full else prop, "targetType": "full" if full else "msg",
                "statusVal": "", "statusType": "auto", "_outputs": 0}

    def _scope(self, c: dict) -> Any:
        scope = c.get("scope")
        return [self.ref(s) for s in scope] if isinstance(scope, list) else None

    def to_catch(self, n: _Node, c: dict) -> dict:
        return {"type": "catch", "scope": self._scope(c), "uncaught": bool(c.get("uncaught"))}

    def to_catch_protocol_error(self, n: _Node, c: dict) -> dict:
        return {"type": "catch", "scope": self._scope(c), "uncaught": False}

    def to_status(self, n: _Node, c: dict) -> dict:
        return {"type": "status", "scope": self._scope(c)}

    def to_complete(self, n: _Node, c: dict) -> dict:
        return {"type": "complete", "scope": self._scope(c), "uncaught": False}

    def to_link_in(self, n: _Node, c: dict) -> dict:
        return {"type": "link in", "links": [self.ref(x) for x in c.get("links") or []]}

    def to_link_out(self, n: _Node, c: dict) -> dict:
        ret = c.get("mode") == "return"
        return {"type": "link out", "mode": "return" if ret else "link",
                "links": [] if ret else [self.ref(x) for x in c.get("links") or []], "_outputs": 0}

    def to_link_call(self, n: _Node, c: dict) -> dict:
        dyn = bool(c.get("dynamic"))
        return {"type": "link call", "links": [] if dyn else [self.ref(x) for x in c.get("links") or []],
                "linkType": "dynamic" if dyn else "static", "timeout": _num_text(_secs(c.get("timeout", 30)))}

    def to_comment(self, n: _Node, c: dict) -> dict:
        return {"type": "comment", "info": str(c.get("text") or ""), "_outputs": 0}

    def to_junction(self, n: _Node, c: dict) -> dict:
        return {"type": "junction"}

    def to_function_js(self, n: _Node, c: dict) -> dict:
        t = _secs(c.get("timeout", 1.0))
        outs = c.get("outputs", 1)
        return {"type": "function", "func": c.get("code", ""), "outputs": outs,
                "timeout": "" if t == 1.0 else _num_text(t), "noerr": 0, "initialize": c.get("initialize") or "",
                "finalize": c.get("finalize") or "", "libs": [], "_outputs": outs}

    def to_switch(self, n: _Node, c: dict) -> dict:
        rules = []
        for r in c.get("rules") or []:
            rule: dict = {"t": r.get("op")}
            if "value" in r:
                v, vt = _typed(r["value"], r.get("value_type") or (None if not isinstance(r["value"], str) else
                                                                   "num" if _isnum(r["value"]) else "str"))
                rule["v"] = v
                rule["vt"] = r["value"] if r.get("op") == "istype" else vt
            if "value2" in r:
                v2, v2t = _typed(r["value2"], r.get("value2_type") or (None if not isinstance(r["value2"], str) else
                                                                       "num" if _isnum(r["value2"]) else "str"))
                rule["v2"], rule["v2t"] = v2, v2t
            if r.get("case_insensitive"):
                rule["case"] = True
            rules.append(rule)
        prop = str(c.get("property") or "payload")
        ptype = c.get("property_type") or "msg"
        if ptype == "msg":
            prop, ptype = _split(prop)
        return {"type": "switch", "property": prop, "propertyType": ptype, "rules": rules,
                "checkall": "false" if c.get("check_all") is False else "true", "repair": False,
                "outputs": len(rules), "_outputs": len(rules)}

    def to_change(self, n: _Node, c: dict) -> dict:
        rules = []
        for r in c.get("rules") or []:
            action = next((a for a in ("set", "change", "delete", "move") if a in r), "set")
            p, pt = _split(str(r[action]))
            rule: dict = {"t": action, "p": p, "pt": pt}
            if action in ("set", "change"):
                tt = r.get("to_type") or ("str" if isinstance(r.get("to"), str) else None)
                to, tot = _typed(r.get("to"), tt)
                rule["to"], rule["tot"] = to, tot
            if action == "change":
                ft = r.get("from_type") or "str"
                frm, fromt = _typed(r.get("from"), ft if ft != "str" or isinstance(r.get("from"), str) else None)
                rule["from"], rule["fromt"] = frm, fromt
            if action == "move":
                rule["to"], rule["tot"] = str(r.get("to")), r.get("to_type") or "msg"
            if r.get("deep_copy"):
                rule["dc"] = True
            rules.append(rule)
        return {"type": "change", "rules": rules, "action": "", "property": "", "from": "", "to": "", "reg": False}

    def to_template(self, n: _Node, c: dict) -> dict:
        fld, ftype = _split(str(c.get("field") or "payload"))
        return {"type": "template", "field": fld, "fieldType": ftype, "format": "handlebars",
                "syntax": c.get("syntax", "mustache"), "template": c.get("template", ""), "output": c.get("output", "str")}

    def to_delay(self, n: _Node, c: dict) -> dict:
        nr = {"type": "delay", "pauseType": "delay", "timeout": "5", "timeoutUnits": "seconds", "rate": "1",
              "nbRateUnits": "1", "rateUnits": "second", "randomFirst": "1", "randomLast": "5",
              "randomUnits": "seconds", "drop": False, "allowrate": bool(c.get("rate_from_msg")), "outputs": 1}
        if c.get("mode") == "rate":
            pt = c.get("per_topic")
            nr["pauseType"] = pt if pt in ("queue", "timed") else "queue" if pt is True else "rate"
            nr["rate"] = _num_text(c.get("rate", 1))
            per = _secs(c.get("per", 1))
            unit, size = next(((u, s) for u, s in (("day", 86400), ("hour", 3600), ("minute", 60)) if per % s == 0),
                              ("second", 1))
            nr["nbRateUnits"], nr["rateUnits"] = _num_text(per / size), unit
            nr["drop"] = bool(c.get("drop"))
            if c.get("drop_output"):
                nr["outputs"] = 2
        elif c.get("random"):
            nr["pauseType"] = "random"
            nr["randomFirst"], nr["randomLast"] = _num_text(_secs(c.get("min", 1))), _num_text(_secs(c.get("max", 5)))
        else:
            nr["pauseType"] = "delayv" if c.get("from_msg") else "delay"
            d = _secs(c.get("delay", 5))
            unit, size = _unit(d)
            nr["timeout"], nr["timeoutUnits"] = _num_text(d / size), unit
        nr["_outputs"] = nr["outputs"]
        return nr

    def to_trigger(self, n: _Node, c: dict) -> dict:
        kinds = {"payload": "pay", "nothing": "nul", "latest": "payl"}
        nr: dict = {"type": "trigger"}
        for key, op, default in (("first", "op1", "1"), ("second", "op2", "0")):
            vt = c.get(f"{key}_type")
            if vt in kinds:
                nr[op], nr[f"{op}type"] = "", kinds[vt]
            else:
                v, t = _typed(c.get(key, default), vt or ("str" if isinstance(c.get(key, default), str) else None))
                nr[op], nr[f"{op}type"] = v, t
        d = _secs(c.get("duration", 0.25))
        unit, size = {1: ("s", 1), 60: ("min", 60), 3600: ("hr", 3600)}.get(
            next((s for s in (3600, 60, 1) if d and d % s == 0), 0), ("ms", 0.001))
        value = d / size
        nr["duration"] = _num_text(-value if c.get("loop") else value)
        nr["units"] = unit
        nr["extend"] = bool(c.get("extend"))
        nr["overrideDelay"] = bool(c.get("delay_from_msg"))
        nr["reset"] = "" if c.get("reset_value") is None else str(c.get("reset_value"))
        nr["bytopic"] = "topic" if c.get("per_topic") else "all"
        nr["topic"] = _split(str(c.get("topic_property") or "topic"))[0]
        nr["outputs"] = 2 if c.get("second_output") else 1
        nr["_outputs"] = nr["outputs"]
        return nr

    def to_base64(self, n: _Node, c: dict) -> dict:
        return {"type": "base64", "action": {"encode": "str", "decode": "b64"}.get(c.get("action"), ""),
                "property": str(c.get("property") or "payload")}

    def to_json(self, n: _Node, c: dict) -> dict:
        return {"type": "json", "property": str(c.get("property") or "payload"),
                "action": c.get("action") if c.get("action") in ("obj", "str") else "", "pretty": bool(c.get("pretty"))}

    def to_file_in(self, n: _Node, c: dict) -> dict:
        return {"type": "file in", "filename": self.path(c.get("filename")) if c.get("filename_type", "str") == "str"
                else c.get("filename") or "", "filenameType": c.get("filename_type", "str")
                if c.get("filename") else "msg", "format": {"bytes": "", "lines": "lines"}.get(c.get("format"), "utf8"),
                "chunk": False, "sendError": bool(c.get("send_error")),
                "encoding": "none" if c.get("encoding", "utf-8") in ("utf-8", "utf8") else c.get("encoding"),
                "allProps": bool(c.get("all_props"))}

    def to_file_out(self, n: _Node, c: dict) -> dict:
        return {"type": "file", "filename": self.path(c.get("filename")) if c.get("filename_type", "str") == "str"
                else c.get("filename") or "", "filenameType": c.get("filename_type", "str")
                if c.get("filename") else "msg", "appendNewline": c.get("add_newline", True),
                "createDir": bool(c.get("create_dirs")),
                "overwriteFile": {"write": "true", "delete": "delete"}.get(c.get("action"), "false"),
                "encoding": "none" if c.get("encoding", "utf-8") in ("utf-8", "utf8") else c.get("encoding")}

    def to_tls_request(self, n: _Node, c: dict) -> dict:
        auth = c.get("auth") or {}
        headers = [{"keyType": "other", "keyValue": k, "valueType": "other", "valueValue": str(v)}
                   for k, v in (c.get("request_headers") or {}).items()]
        return {"type": "http request", "method": c.get("method", "GET"), "ret": c.get("ret", "txt"),
                "paytoqs": "ignore", "url": c.get("url") or "", "tls": self.ref(c.get("tls")), "persist": False,
                "proxy": "", "insecureHTTPParser": False, "authType": auth.get("type", "") if auth else "",
                "senderr": True, "headers": headers}  # tls-request sends nothing on after a transport error

    def path(self, value: Any) -> str:
        """meterflow reads files relative to the flow file; Node-RED relative to where it runs."""
        if not value:
            return ""
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path_)), value))

    def to_tls_profile(self, n: _Node, c: dict) -> dict:
        return {"type": "tls-config", "cert": self.path(c.get("cert")), "key": self.path(c.get("key")),
                "ca": self.path(c.get("ca")),
                "certname": "", "keyname": "", "caname": "", "servername": c.get("server_name") or "",
                "verifyservercert": c.get("verify", True), "alpnprotocol": ""}

    def to_mqtt_broker(self, n: _Node, c: dict) -> dict:
        nr = {"type": "mqtt-broker", "broker": str(c.get("host") or "localhost"),
              "port": str(c.get("port") or (8883 if c.get("tls") else 1883)), "clientid": c.get("client_id") or "",
              "autoConnect": True, "usetls": bool(c.get("tls")), "tls": self.ref(c.get("tls")),
              "protocolVersion": {"3.1": "3", "5": "5"}.get(c.get("protocol"), "4"),
              "keepalive": _num_text(_secs(c.get("keepalive", 60))), "cleansession": c.get("clean_session", True)}
        for key in ("birth", "close", "will"):
            m = c.get(key) or {}
            nr[f"{key}Topic"] = m.get("topic", "")
            nr[f"{key}Qos"] = str(m.get("qos", 0))
            nr[f"{key}Retain"] = "true" if m.get("retain") else "false"
            nr[f"{key}Payload"] = "" if m.get("payload") is None else str(m.get("payload"))
            nr[f"{key}Msg"] = {}
        nr["userProps"], nr["sessionExpiry"] = "", ""
        return nr

    def to_mqtt_out(self, n: _Node, c: dict) -> dict:
        retain = c.get("retain")
        return {"type": "mqtt out", "topic": c.get("topic") or "", "qos": "" if c.get("qos") is None else str(c["qos"]),
                "retain": "" if retain is None else ("true" if retain else "false"), "respTopic": "", "contentType": "",
                "userProps": "", "correl": "", "expiry": "", "broker": self.ref(c.get("broker")), "_outputs": 0}

    def to_mqtt_in(self, n: _Node, c: dict) -> dict:
        return {"type": "mqtt in", "topic": c.get("topic", ""), "qos": str(c.get("qos", 2)),
                "datatype": c.get("datatype", "auto"), "broker": self.ref(c.get("broker")), "nl": False, "rap": True,
                "rh": 0, "inputs": 0}

    def to_email(self, n: _Node, c: dict) -> dict | None:
        server = self.by_mf.get(c.get("server")) if hasattr(self, "by_mf") else None
        s = getattr(server, "defaults", None) or {}
        s = _unescape(s, self.env)
        security = s.get("security", "implicit_tls")
        to = c.get("to")
        return {"type": "e-mail", "server": s.get("host", "smtp.gmail.com"),
                "port": str(s.get("port") or {"implicit_tls": 465, "starttls": 587}.get(security, 25)),
                "secure": security == "implicit_tls", "tls": s.get("verify", True), "authtype": "BASIC",
                "name": ", ".join(to) if isinstance(to, list) else (to or ""), "dname": n.name or n.id, "_outputs": 0}

    def to_credentials(self, n: _Node, c: dict) -> dict:
        props = []
        for target in c.get("fields") or {}:
            p, pt = _split(str(target))
            props.append({"value": p, "type": pt})
        return {"type": "credentials", "props": props}

    def to_date_format(self, n: _Node, c: dict) -> dict:
        it = c.get("input_type", "msg")
        inp, itype = (_split(str(c.get("input") or "payload")) if it == "msg" else
                      (str(c.get("input") or ""), "str") if it == "str" else ("", "date"))
        out, otype = _split(str(c.get("output") or "payload"))
        amount = c.get("adjust_amount") or 0
        fmt = c.get("format", "iso")
        return {"type": "moment", "topic": c.get("topic") or "", "input": inp, "inputType": itype,
                "inTz": c.get("input_tz") or "", "adjAmount": abs(amount), "adjType": c.get("adjust_unit", "days"),
                "adjDir": "subtract" if amount < 0 else "add", "format": "" if fmt == "iso" else fmt, "locale": "C",
                "output": out, "outputType": otype, "outTz": c.get("output_tz") or c.get("input_tz") or ""}

    def to_ha_server(self, n: _Node, c: dict) -> dict:
        return {"type": "server", "name": n.name or n.id, "version": 1, "addon": False,
                "rejectUnauthorizedCerts": True, "ha_boolean": "y|yes|true|on|home|open", "connectionDelay": True,
                "cacheJson": True}

    def to_ha_service(self, n: _Node, c: dict) -> dict:
        ent = c.get("entity_id")
        data = c.get("data") or {}
        expr = self.ha_data.get(n.id)
        return {"type": "api-call-service", "server": self.ref(c.get("server")), "version": 3, "debugenabled": False,
                "service_domain": c.get("domain") or "", "service": c.get("service") or "",
                "entityId": ",".join(ent) if isinstance(ent, list) else (ent or ""),
                "data": expr if expr else json.dumps(data) if data else "", "dataType": "jsonata" if expr else "json",
                "mergecontext": "",
                "mustacheAltTags": False, "outputProperties": [], "queue": "none"}

    def to_unsupported(self, n: _Node, c: dict) -> dict:
        nr = dict(c.get("nodered") or {})
        nr["type"] = c.get("nodered_type")
        nr["_outputs"] = c.get("outputs", 1)
        return nr

    def to_unsupported_config(self, n: _Node, c: dict) -> dict:
        nr = dict(c.get("nodered") or {})
        nr["type"] = c.get("nodered_type")
        return nr


def _unit(d: float) -> tuple[str, float]:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1)):
        if d and d % size == 0:
            return unit, size
    return ("milliseconds", 0.001) if d and d < 1 else ("seconds", 1)


def _isnum(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip() != ""


def _coord(text: str) -> int | float:
    f = float(text)
    return int(f) if f.is_integer() else f


def _norm(v: Any) -> Any:
    """Compare configs the way they behave: durations as seconds, whole floats as ints."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h|d))+", v):
        s = _secs(v)
        return int(s) if float(s).is_integer() else s
    return v


def _map_back(imp: Importer, nr: dict) -> MfNode | None:
    from .importer import MAPPERS

    mapper = MAPPERS.get(nr.get("type"))
    if mapper is None:
        return None
    mf_id = imp.idmap.get(nr["id"], nr["id"])
    try:
        result = mapper(imp, nr, mf_id)
    except Exception:
        return None
    node = result[0] if isinstance(result, tuple) else result
    if node.type in ("unsupported", "unsupported-config"):
        return None
    return node


def export_flow(path: str, env=None) -> ExportResult:
    exp = Exporter(path, env)
    return exp.run()


__all__ = ["ExportResult", "Exporter", "export_flow", "seconds"]
