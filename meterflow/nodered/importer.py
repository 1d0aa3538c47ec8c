"""Node-RED ``flows.json`` -> meterflow flow YAML.

Every Node-RED node becomes a meterflow node (docs/node-red.md has the table); one that
meterflow cannot run becomes an ``unsupported`` node that keeps its original config, so
nothing is dropped silently and ``meterflow check`` names it.  Ids become readable (from
the node names, ``request_read``, ``request_read_2``); the Node-RED id stays beside each
node as a trailing comment, ``- id: request_read  # nodered: 18bfa68f0764b928 @1000,760``
(with the editor position), which ``meterflow export`` reads to write the original ids
and layout back.  A comment was chosen over a field because the flow loader rejects
unknown fields; if the core ever reserves ``nodered_id`` the importer writes that instead.

Where Node-RED and meterflow differ in a way that matters, the YAML gets a ``# note:``
line above the node and the CLI prints it.  Two small adapter nodes may be inserted:

* before every request node, a change node that moves ``msg.headers`` (which Node-RED's
  http request sends) to ``msg.request_headers`` (which tls-request sends), dropping the
  framing headers a previous response left there (the SMT flows' header leak);
  ``meterflow export`` folds it back;
* before a Home Assistant call whose service data is a JSONata expression, a change node
  that evaluates it into ``msg.payload.data`` (which ha-service merges).

Credentials (``flows_cred.json``, see :mod:`.credentials`) are not written into the YAML:
they become ``${creds:NAME.FIELD}`` references, and the values are returned for the CLI
to put in meterflow's credential store.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .credentials import contrib_values

HEX_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{5,8}\.[0-9a-f]{3,8}")
READABLE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # kept as it is (unless it looks like a Node-RED id)
WHOLE_ENV = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
BLOCK = re.compile(r"\n*```meterflow\n(.*?)\n```\s*$", re.S)
VOLATILE = {"id", "z", "x", "y", "wires", "g", "d", "info", "l", "w", "h"}

HEADERS_ADAPTER_NAME = "msg.headers to request_headers"
HEADERS_ADAPTER_RULES = [
    {"move": "headers", "to": "request_headers"},
    {"delete": "request_headers.content-length"},
    {"delete": "request_headers.transfer-encoding"},
    {"delete": "request_headers.x-node-red-request-node"},
]
HA_DATA_ADAPTER_NAME = "service data (JSONata)"

#: Node-RED core and common contrib types meterflow has no node for, and why.
UNSUPPORTED = {
    "range": "no range node: scale with a change rule (to_type jsonata) or a function",
    "exec": "running shell commands is not supported",
    "rbe": "no filter (report-by-exception) node yet",
    "filter": "no filter (report-by-exception) node yet",
    "split": "message sequences (split/join/sort/batch) are not supported",
    "join": "message sequences (split/join/sort/batch) are not supported",
    "sort": "message sequences (split/join/sort/batch) are not supported",
    "batch": "message sequences (split/join/sort/batch) are not supported",
    "csv": "no CSV parser node",
    "html": "no HTML parser node",
    "xml": "no XML parser node",
    "yaml": "no YAML parser node",
    "watch": "no file-watch node",
    "http in": "meterflow has no HTTP server nodes",
    "http response": "meterflow has no HTTP server nodes",
    "http proxy": "HTTP proxies are not supported by tls-request",
    "websocket in": "no WebSocket nodes",
    "websocket out": "no WebSocket nodes",
    "websocket-listener": "no WebSocket nodes",
    "websocket-client": "no WebSocket nodes",
    "tcp in": "no TCP nodes",
    "tcp out": "no TCP nodes",
    "tcp request": "no TCP nodes",
    "udp in": "no UDP nodes",
    "udp out": "no UDP nodes",
    "unknown": "the node's type was missing in the Node-RED that exported it",
    "e-mail in": "no e-mail (IMAP/POP3) input node",
    "server-state-changed": "meterflow has no Home Assistant state-change trigger (ha-server talks to the REST API,"
                            " not the event stream); publish the state over MQTT (HA mqtt_statestream) and"
                            " import with --ha-statestream BASE_TOPIC to get an mqtt-in node, or poll the state",
    "trigger-state": "meterflow has no Home Assistant state trigger",
    "poll-state": "meterflow has no Home Assistant state poller (use inject + tls-request on /api/states)",
    "ha-entity": "meterflow cannot create Home Assistant entities this way (see ha-discovery)",
    "current-state": "meterflow has no Home Assistant state lookup node",
}

#: Readable id stems for nameless nodes.
TYPE_STEMS = {"https-node": "request", "http request": "request", "api-call-service": "ha_service",
              "moment": "date_format", "e-mail": "email", "cronplus": "schedule", "mqtt-broker": "mqtt_broker",
              "tls-config": "tls", "server": "home_assistant", "link in": "link_in", "link out": "link_out",
              "link call": "link_call", "file in": "file_in", "file": "file_out"}

UNIT_SECONDS = {"milliseconds": 0.001, "ms": 0.001, "seconds": 1, "s": 1, "second": 1, "minutes": 60, "min": 60,
                "minute": 60, "hours": 3600, "hr": 3600, "hour": 3600, "days": 86400, "day": 86400}


class Ref(str):
    """A ``${...}`` reference the importer wrote on purpose: emitted without escaping."""


class QuotedRef(Ref):
    """Text from a meterflow block that was quoted in its YAML: it stays quoted (so it stays a string)."""


@dataclass
class MfNode:
    id: str
    type: str
    fields: dict = field(default_factory=dict)
    name: str = ""
    disabled: bool = False
    info: str = ""
    wires: list[list[str]] | None = None
    is_config: bool = False
    nodered_id: str | None = None
    pos: tuple | None = None
    notes: list[str] = field(default_factory=list)
    outputs: int = 1


@dataclass
class ImportResult:
    text: str
    nodes: list[MfNode]
    secrets: list[tuple[str, str, str]]  # (credential name, field, value) for the credential store
    notes: list[str]  # "node id: note" lines for the user
    unsupported: list[str]  # ids of unsupported nodes


class FlowsJsonError(ValueError):
    """flows.json is not something we can import (not a list of nodes, ...)."""


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if len(s) > limit:
        s = s[:limit].rsplit("_", 1)[0] or s[:limit]
    if s and s[0].isdigit():
        s = "n_" + s
    return s


def seconds(value: Any, unit: str = "seconds") -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        n = 0.0
    return n * UNIT_SECONDS.get(unit, 1)


def duration(secs: float) -> str | int | float:
    """A readable duration: 10s, 3m, 250ms, 1h30m..."""
    if secs == 0:
        return 0
    ms = round(secs * 1000)
    if abs(ms - secs * 1000) > 1e-6 or ms % 1000:
        return f"{ms}ms" if abs(ms - secs * 1000) < 1e-6 else secs
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _num(v: Any, default: Any = None) -> Any:
    """'5' -> 5, '0.5' -> 0.5; '' and junk -> default."""
    if isinstance(v, bool):
        return default
    if isinstance(v, int | float):
        return v
    try:
        f = float(str(v).strip())
    except (TypeError, ValueError):
        return default
    return int(f) if f.is_integer() else f


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true")


def block_hash(nr: dict) -> str:
    """Fingerprint of a Node-RED node's settings (not its id, position, wires or notes)."""
    data = {k: v for k, v in nr.items() if k not in VOLATILE}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def split_block(info: str) -> tuple[str, dict | None]:
    """Separate a ``meterflow`` block (written by export) from a node's notes."""
    if not isinstance(info, str):
        return "", None
    m = BLOCK.search(info)
    if not m:
        return info, None
    try:
        block = json.loads(m.group(1))
    except ValueError:
        return info, None
    return info[: m.start()], block if isinstance(block, dict) else None


class Importer:
    def __init__(self, flows: Any, *, name: str = "flow", creds: dict | None = None, cred_prefix: str | None = None,
                 tab: str | None = None, ha_statestream: str | None = None, keep_ids: dict | None = None):
        if isinstance(flows, dict) and isinstance(flows.get("flows"), list):
            flows = flows["flows"]  # the admin API's {flows, rev}
        if not isinstance(flows, list) or not all(isinstance(n, dict) and "id" in n and "type" in n for n in flows):
            raise FlowsJsonError("not a Node-RED flows.json: expected a JSON array of nodes with 'id' and 'type'")
        self.raw = flows
        self.name = name
        self.creds = creds or {}
        self.have_creds = creds is not None
        self.cred_prefix = cred_prefix if cred_prefix is not None else (slug(name).replace("_", "-") + "-" if name else "")
        self.tab_filter = tab
        self.ha_statestream = ha_statestream
        self.keep_ids = keep_ids or {}  # Node-RED id -> meterflow id (export's own check)
        self.idmap: dict[str, str] = {}
        self.input_of: dict[str, str] = {}  # Node-RED id -> the meterflow id that receives its input
        self.taken: set[str] = set()
        self.secrets: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self.global_notes: list[str] = []
        self.out: list[MfNode] = []
        self.generated: dict[tuple, MfNode] = {}  # shared generated config nodes (smtp servers)
        self.by_id: dict[str, dict] = {}

    # ---- ids -----------------------------------------------------------------------------------
    def claim(self, stem: str) -> str:
        stem = stem or "node"
        candidate, n = stem, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{stem}_{n}"
        self.taken.add(candidate)
        return candidate

    def stem(self, nr: dict) -> str:
        t = nr["type"]
        label = nr.get("dname") if t == "e-mail" else nr.get("name")
        if t == "comment" and not label:
            label = "note"
        return slug(str(label or "")) or slug(TYPE_STEMS.get(t, t))

    def assign_ids(self, nodes: list[dict]) -> None:
        pending = []
        for nr in nodes:
            nid = nr["id"]
            _, block = split_block(nr.get("info", ""))
            fixed = self.keep_ids.get(nid)
            if fixed is None and block and block.get("hash") == block_hash(nr):
                fixed = (block.get("meterflow") or {}).get("id")
            if fixed is None and READABLE_ID.fullmatch(nid) and not HEX_ID.fullmatch(nid):
                fixed = nid
            if fixed and fixed not in self.taken:
                self.taken.add(fixed)
                self.idmap[nid] = fixed
            else:
                pending.append(nr)
        for nr in pending:
            self.idmap[nr["id"]] = self.claim(self.stem(nr))

    def ref(self, nr_id: Any) -> str | None:
        return self.idmap.get(nr_id) if isinstance(nr_id, str) else None

    def refs(self, ids: Any) -> list[str]:
        return [self.idmap[i] for i in ids or [] if isinstance(i, str) and i in self.idmap]

    def cred_name(self, mf_id: str) -> str:
        return f"{self.cred_prefix}{mf_id}".replace("_", "-")

    def secret(self, mf_id: str, nr_id: str, nr_field: str, mf_field: str | None = None,
               always: bool = False) -> QuotedRef | None:
        """``${creds:NAME.FIELD}`` for a Node-RED credential field; records its value when known."""
        value = (self.creds.get(nr_id) or {}).get(nr_field)
        if value in (None, "") and (self.have_creds or not always):
            return None
        name, fld = self.cred_name(mf_id), re.sub(r"[^A-Za-z0-9_-]", "_", mf_field or nr_field)
        if value not in (None, ""):
            self.secrets.append((name, fld, str(value)))
        return QuotedRef(f"${{creds:{name}.{fld}}}")  # quoted: a secret of digits stays text

    # ---- the whole import ------------------------------------------------------------------------
    def run(self) -> ImportResult:
        tabs = {n["id"]: n for n in self.raw if n["type"] == "tab"}
        subflows = {n["id"]: n for n in self.raw if n["type"] == "subflow"}
        groups = [n for n in self.raw if n["type"] == "group"]
        nodes = [n for n in self.raw if n["type"] not in ("tab", "subflow", "group")]
        for n in nodes:
            if n["type"] == "global-config":
                if n.get("env"):
                    self.notes.append(f"global-config: its environment variables ({', '.join(e.get('name', '?') for e in n['env'])})"
                                      " are not imported; set them in the environment meterflow runs in")
        nodes = [n for n in nodes if n["type"] != "global-config"]
        nodes = self.flatten_subflows(nodes, subflows)
        if self.tab_filter:
            wanted = {tid for tid, t in tabs.items() if self.tab_filter in (tid, t.get("label"))}
            if not wanted:
                raise FlowsJsonError(f"no tab {self.tab_filter!r}; tabs: {', '.join(t.get('label', tid) for tid, t in tabs.items())}")
            nodes = [n for n in nodes if n.get("z") in wanted or not self.is_flow_node(n) and n.get("z") in (None, "", *wanted)]
        if groups:
            self.notes.append(f"{len(groups)} group(s) not imported: groups only arrange nodes in the editor")
        used_tabs = {n.get("z") for n in nodes if self.is_flow_node(n)}
        if len(used_tabs) > 1:
            self.notes.append(f"{len(used_tabs)} tabs merged into one flow: they now share one flow context")
        self.by_id = {n["id"]: n for n in nodes}
        self.assign_ids(nodes)
        self.restore_blocks(nodes)
        for nr in nodes:
            disabled = bool(nr.get("d")) or bool(tabs.get(nr.get("z"), {}).get("disabled"))
            self.map_one(nr, disabled)
        self.resolve_wires(nodes)
        self.global_notes = list(self.notes)
        for n in self.out:
            for note in n.notes:
                self.notes.append(f"{n.id}: {note}")
        text = emit(self)
        return ImportResult(text, self.out, self.secrets, self.notes,
                            [n.id for n in self.out if n.type in ("unsupported", "unsupported-config")])

    @staticmethod
    def is_flow_node(nr: dict) -> bool:
        return "x" in nr and "y" in nr

    def flatten_subflows(self, nodes: list[dict], subflows: dict) -> list[dict]:
        """Copy each subflow instance's inner nodes in, ids ``<instance>-<inner id>`` as Node-RED does."""
        inner = {sid: [n for n in nodes if n.get("z") == sid] for sid in subflows}
        out = [n for n in nodes if n.get("z") not in subflows]
        for _ in range(10):  # nested subflows: repeat until no instance is left
            instances = [n for n in out if n["type"].startswith("subflow:") and n["type"][8:] in subflows]
            if not instances:
                break
            for inst in instances:
                sf = subflows[inst["type"][8:]]
                prefix = inst["id"] + "-"
                copies = []
                for n in inner[sf["id"]]:
                    c = json.loads(json.dumps(n))
                    c["id"] = prefix + n["id"]
                    c["z"] = inst.get("z")
                    c["name"] = f"{inst.get('name') or sf.get('name') or 'subflow'}/{n.get('name') or n['type']}"
                    if inst.get("d"):
                        c["d"] = True
                    c["wires"] = [[prefix + t for t in out_] for out_ in n.get("wires", [])]
                    for key in ("scope", "links"):
                        if isinstance(c.get(key), list):
                            c[key] = [prefix + t for t in c[key]]
                    copies.append(c)
                # wires into the instance go to the subflow's input targets; its outputs feed the instance's wires
                targets = [prefix + w["id"] for port in sf.get("in", [])[:1] for w in port.get("wires", [])]
                for n in out + copies:
                    n["wires"] = [[t2 for t in o for t2 in (targets if t == inst["id"] else [t])] for o in n.get("wires", [])]
                for i, port in enumerate(sf.get("out", [])):
                    dest = inst.get("wires", [])[i] if i < len(inst.get("wires", [])) else []
                    for w in port.get("wires", []):
                        src = next((c for c in copies if c["id"] == prefix + w["id"]), None)
                        if src is not None:
                            port_no = int(w.get("port", 0))
                            while len(src["wires"]) <= port_no:
                                src["wires"].append([])
                            src["wires"][port_no] = src["wires"][port_no] + list(dest)
                        elif w["id"] == sf["id"]:  # input wired straight to output
                            for n in out + copies:
                                n["wires"] = [o + list(dest) if inst["id"] in o else o for o in n.get("wires", [])]
                if sf.get("env") or inst.get("env"):
                    self.notes.append(f"subflow instance {inst['id']}: its environment variables are not imported")
                self.notes.append(f"subflow instance {inst.get('name') or inst['id']} flattened into {len(copies)} node(s);"
                                  " they share the flow's context")
                out = [n for n in out if n is not inst] + copies
        return out

    def restore_blocks(self, nodes: list[dict]) -> None:
        """Nodes exported from meterflow with a ``meterflow`` block, unchanged since: restore them as they were."""
        self.restored: dict[str, MfNode] = {}
        for nr in nodes:
            _, block = split_block(nr.get("info", ""))
            if not (block and block.get("hash") == block_hash(nr) and isinstance(block.get("meterflow"), dict)):
                continue
            b = block["meterflow"]
            node = MfNode(self.idmap[nr["id"]], str(b.get("type") or "unsupported"), _verbatim(b.get("fields") or {}, {tuple(q) for q in b.get("quoted") or []}),
                          name=str(b.get("name") or ""), is_config=bool(b.get("config")), outputs=int(b.get("outputs", 1)))
            if isinstance(b.get("disabled"), str):  # e.g. ${HA_DISABLED:-true}
                node.disabled = Ref(b["disabled"])  # type: ignore[assignment]
            self.restored[nr["id"]] = node
            if node.type == "smtp-server":  # e-mail nodes mapped later use it instead of making one
                f = node.fields
                security = f.get("security", "implicit_tls")
                port = f.get("port") or {"implicit_tls": 465, "starttls": 587}.get(security, 25)
                self.generated[(f.get("host"), port, security == "implicit_tls", f.get("verify", True))] = node

    # ---- one node ----------------------------------------------------------------------------------
    def map_one(self, nr: dict, disabled: bool) -> None:
        info, _ = split_block(nr.get("info", ""))
        mf_id = self.idmap[nr["id"]]
        self.input_of[nr["id"]] = mf_id
        if nr["id"] in self.restored:
            node, extra = self.restored[nr["id"]], []
        else:
            mapper = MAPPERS.get(nr["type"])
            if mapper is None:
                why = UNSUPPORTED.get(nr["type"]) or ("a subflow whose definition is missing" if nr["type"].startswith("subflow:")
                                                      else "no meterflow equivalent for this Node-RED node type")
                if nr["type"] == "server-state-changed" and self.ha_statestream:
                    mapper = map_state_changed
                else:
                    node, extra = self.unsupported(nr, why), []
            if mapper is not None:
                result = mapper(self, nr, mf_id)
                node, extra = (result[0], list(result[1:])) if isinstance(result, tuple) else (result, [])
        node.id = node.id or mf_id
        node.nodered_id = nr["id"]
        restored = nr["id"] in self.restored
        if not restored:
            node.name = node.name or (nr.get("name") or "" if nr["type"] != "e-mail" else nr.get("dname") or "")
        node.disabled = node.disabled or disabled
        if restored or nr["type"] != "comment":  # a Node-RED comment's info is its text
            node.info = info.strip() if isinstance(info, str) else ""
        node.is_config = node.is_config or (not self.is_flow_node(nr) and nr["id"] not in self.restored)
        if self.is_flow_node(nr) and not node.is_config:
            node.pos = (nr.get("x"), nr.get("y"))
        for e in extra:
            e.disabled = e.disabled or node.disabled
            e.nodered_id = e.id  # what export will call it
            if not e.is_config and node.pos and None not in node.pos:
                e.pos = (_num(node.pos[0], 0) - 140, _num(node.pos[1], 0) + 40)
        before = [e for e in extra if getattr(e, "_before", False)]
        after = [e for e in extra if not getattr(e, "_before", False)]
        if before:
            self.input_of[nr["id"]] = before[0].id
        self.out.extend(before)
        self.out.append(node)
        self.out.extend(after)

    def unsupported(self, nr: dict, why: str) -> MfNode:
        original = {k: v for k, v in nr.items() if k not in ("id", "z", "x", "y", "wires", "g", "d", "info")}
        original.pop("type")
        if self.is_flow_node(nr):
            outs = len(nr.get("wires") or [])
            return MfNode("", "unsupported", {"nodered_type": nr["type"], "reason": why, "outputs": outs,
                                              "nodered": original}, outputs=outs)
        return MfNode("", "unsupported-config", {"nodered_type": nr["type"], "reason": why, "nodered": original},
                      is_config=True)

    def resolve_wires(self, nodes: list[dict]) -> None:
        by_mf = {n.id: n for n in self.out}
        for nr in nodes:
            mf = by_mf.get(self.idmap[nr["id"]])
            if mf is None or mf.is_config:
                continue
            if mf.type == "link-out" or mf.outputs == 0 and not any(nr.get("wires") or []):
                mf.wires = None
                continue
            wires = []
            for out in nr.get("wires") or []:
                targets = []
                for t in out:
                    if t in self.input_of:
                        targets.append(self.input_of[t])
                    else:
                        mf.notes.append(f"wire to {t} dropped: no such node in this import")
                wires.append(targets)
            if len(wires) > mf.outputs:
                if any(wires[mf.outputs:]):
                    mf.notes.append(f"wires of outputs beyond {mf.outputs} dropped")
                wires = wires[: mf.outputs]
            mf.wires = wires
        for n in self.out:  # adapters feed the node they stand before
            target = getattr(n, "_feeds", None)
            if target:
                n.wires = [[target]]


# ---- helpers the mappers share --------------------------------------------------------------------
def _verbatim(v: Any, quoted: set | frozenset = frozenset(), path: tuple = ()) -> Any:
    """Fields from a meterflow block are YAML text already: emit their strings as they are
    (quoted where the original was, since quoting decides how ``${...}`` results are typed)."""
    if isinstance(v, str):
        return QuotedRef(v) if path in quoted else Ref(v)
    if isinstance(v, dict):
        return {k: _verbatim(x, quoted, path + (k,)) for k, x in v.items()}
    if isinstance(v, list):
        return [_verbatim(x, quoted, path + (i,)) for i, x in enumerate(v)]
    return v


def _target(p: Any, pt: str | None) -> str:
    """A change/template target: msg path, flow.<key>, global.<key> (context store prefix dropped)."""
    p = str(p or "payload")
    m = re.match(r"#:\((\S+?)\)::(.*)$", p)
    if m:
        p = m.group(2)
    if pt in ("flow", "global"):
        return f"{pt}.{p}"
    return p[4:] if p.startswith("msg.") else p


def _before(node: MfNode, feeds: str) -> MfNode:
    node._before = True  # type: ignore[attr-defined]
    node._feeds = feeds  # type: ignore[attr-defined]
    return node


def _typed(fields: dict, key: str, value: Any, vtype: str | None, type_key: str | None = None) -> None:
    """Write ``value`` (and its type unless str-for-text) the way meterflow reads typed values."""
    type_key = type_key or f"{key}_type"
    if vtype in (None, "", "str"):
        fields[key] = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        return
    if vtype == "date" and value in ("", None):
        fields[type_key] = "date"
        return
    fields[key] = value
    fields[type_key] = vtype


# ---- mappers: Node-RED node -> MfNode (+ extra nodes) ---------------------------------------------------
def map_inject(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    props = nr.get("props")
    payload = {"p": "payload", "v": nr.get("payload", ""), "vt": nr.get("payloadType") or "date"}
    topic = {"p": "topic", "v": nr.get("topic", ""), "vt": "str"}
    if not isinstance(props, list):
        resolved = [payload, topic]
    else:
        resolved = []
        for p in props:
            if not isinstance(p, dict):
                continue
            if p.get("p") == "payload" and "v" not in p:
                resolved.append(payload)
            elif p.get("p") == "topic" and "v" not in p and p.get("vt", "str") == "str":
                resolved.append(topic)
            else:
                resolved.append({"p": p.get("p"), "v": p.get("v", ""), "vt": p.get("vt") or "str"})
    if [r["p"] for r in resolved] in (["payload", "topic"], ["payload"]) and resolved[-1]["vt"] == "str":
        pv = resolved[0]
        if pv["vt"] in ("str", None):
            f["payload"] = str(pv["v"] if pv["v"] is not None else "")
        elif pv["vt"] == "date" and pv["v"] in ("", None):
            f["payload_type"] = "date"
        else:
            f["payload"] = pv["v"]
            f["payload_type"] = pv["vt"]
        if len(resolved) == 2:
            f["topic"] = str(resolved[1]["v"] or "")
    else:
        plist = []
        for r in resolved:
            item: dict = {"property": str(r["p"])}
            _typed(item, "value", r["v"], r["vt"], "type")
            plist.append(item)
        f["props"] = plist
    if _truthy(nr.get("once")):
        f["once"] = True
        od = _num(nr.get("onceDelay"), 0.1)
        if od not in (None, 0.1):
            f["once_delay"] = duration(seconds(od))
    rep = _num(nr.get("repeat"), 0)
    if rep:
        f["repeat"] = duration(rep)
    elif nr.get("crontab"):
        f["cron"] = str(nr["crontab"])
    return MfNode(mf_id, "inject", f)


def map_debug(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    complete = nr.get("complete")
    node = MfNode(mf_id, "debug", f, outputs=0)
    if complete in (True, "true") or nr.get("targetType") == "full":
        f["property"] = "msg"
    elif complete in (None, False, "false", ""):
        pass
    elif nr.get("targetType") == "jsonata":
        f["property"] = "msg"
        node.notes.append(f"the JSONata debug output {complete!r} is not supported; the whole message is shown")
    elif _target(complete, "msg") != "payload":
        f["property"] = _target(complete, "msg")
    if nr.get("active") is False:
        f["active"] = False
    if nr.get("tostatus"):
        node.notes.append("the debug status display is not available")
    return node


def _scope(imp: Importer, nr: dict, node: MfNode) -> None:
    scope = nr.get("scope")
    if isinstance(scope, list):
        node.fields["scope"] = imp.refs(scope)
    elif scope == "group":
        node.notes.append("scope 'group' (nodes in the same group) is not supported: it now watches all nodes")


def map_catch(imp: Importer, nr: dict, mf_id: str):
    node = MfNode(mf_id, "catch", {})
    _scope(imp, nr, node)
    if _truthy(nr.get("uncaught")):
        node.fields["uncaught"] = True
    return node


def map_status(imp: Importer, nr: dict, mf_id: str):
    node = MfNode(mf_id, "status", {})
    _scope(imp, nr, node)
    return node


def map_complete(imp: Importer, nr: dict, mf_id: str):
    node = MfNode(mf_id, "complete", {"scope": []})
    _scope(imp, nr, node)
    return node


def map_link_in(imp: Importer, nr: dict, mf_id: str):
    return MfNode(mf_id, "link-in", {"links": imp.refs(nr.get("links"))})


def map_link_out(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    if nr.get("mode") == "return":
        f["mode"] = "return"
    else:
        f["links"] = imp.refs(nr.get("links"))
    return MfNode(mf_id, "link-out", f, outputs=0)


def map_link_call(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    if nr.get("linkType") == "dynamic":
        f["dynamic"] = True
    else:
        f["links"] = imp.refs(nr.get("links"))
    t = _num(nr.get("timeout"), 30)
    if t not in (None, 30):
        f["timeout"] = duration(seconds(t))
    return MfNode(mf_id, "link-call", f)


def map_comment(imp: Importer, nr: dict, mf_id: str):
    f = {}
    if nr.get("info"):
        f["text"] = split_block(nr["info"])[0].strip()
    return MfNode(mf_id, "comment", f, outputs=0)


def map_junction(imp: Importer, nr: dict, mf_id: str):
    return MfNode(mf_id, "junction", {})


def map_function(imp: Importer, nr: dict, mf_id: str):
    if nr.get("libs"):
        mods = ", ".join(str(lib.get("module")) for lib in nr["libs"] if isinstance(lib, dict))
        return imp.unsupported(nr, f"the function uses npm modules ({mods}), which meterflow cannot load")
    outputs = _num(nr.get("outputs"), 1)
    f: dict = {"code": str(nr.get("func") or "return msg;")}
    if outputs != 1:
        f["outputs"] = outputs
    t = _num(nr.get("timeout"), 0)
    if t:
        f["timeout"] = duration(seconds(t))
    for key in ("initialize", "finalize"):
        if str(nr.get(key) or "").strip():
            f[key] = str(nr[key])
    return MfNode(mf_id, "function-js", f, outputs=outputs)


def map_switch(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    pt = nr.get("propertyType") or "msg"
    f["property"] = _target(nr.get("property", "payload"), "msg") if pt == "msg" else str(nr.get("property", ""))
    if pt != "msg":
        f["property_type"] = pt
    rules = []
    for r in nr.get("rules") or []:
        rule: dict = {"op": r.get("t")}
        if r.get("t") not in ("else", "true", "false", "null", "nnull", "empty", "nempty"):
            if r.get("t") == "istype":
                rule["value"] = r.get("v")
            else:
                if "v" in r:
                    rule["value"] = r["v"]
                if r.get("vt"):
                    rule["value_type"] = r["vt"]
            if r.get("t") in ("btwn", "index"):
                if "v2" in r:
                    rule["value2"] = r["v2"]
                if r.get("v2t"):
                    rule["value2_type"] = r["v2t"]
        if r.get("case"):
            rule["case_insensitive"] = True
        rules.append(rule)
    f["rules"] = rules
    node = MfNode(mf_id, "switch", f, outputs=len(rules))
    if nr.get("checkall") == "false":
        f["check_all"] = False
    if _truthy(nr.get("repair")):
        node.notes.append("'recreate message sequences' (repair) is not supported")
    return node


def _legacy_change_rules(nr: dict) -> list[dict]:
    action = nr.get("action") or "replace"
    rule = {"t": "set" if action == "replace" else action, "p": nr.get("property") or "payload",
            "to": nr.get("to", ""), "from": nr.get("from", "")}
    if action == "change" and _truthy(nr.get("reg")):
        rule["fromt"] = "re"
    return [rule]


def map_change(imp: Importer, nr: dict, mf_id: str):
    rules = nr.get("rules") if isinstance(nr.get("rules"), list) else _legacy_change_rules(nr)
    out = []
    node = MfNode(mf_id, "change", {"rules": out})
    for r in rules:
        t, pt = r.get("t", "set"), r.get("pt") or "msg"
        target = _target(r.get("p"), pt)
        if "#:(" in str(r.get("p", "")):
            node.notes.append("a context store name (#:(store)::) was dropped: meterflow has one store per flow")
        to, tot = r.get("to", ""), r.get("tot")
        if tot is None and t in ("set", "change"):
            tot = "msg" if isinstance(to, str) and to.startswith("msg.") else "str"
            if tot == "msg":
                to = to[4:]
        rule: dict
        if t == "set":
            rule = {"set": target}
            _typed(rule, "to", _target(to, "msg") if tot == "msg" else to, tot)
            if r.get("dc"):
                rule["deep_copy"] = True
        elif t == "change":
            rule = {"change": target}
            ft = r.get("fromt") or ("re" if r.get("re") else "str")
            _typed(rule, "from", r.get("from", ""), ft)
            _typed(rule, "to", to, tot)
        elif t == "delete":
            rule = {"delete": target}
        elif t == "move":
            tot = tot or "msg"
            rule = {"move": target, "to": _target(to, "msg") if tot == "msg" else str(to)}
            if tot != "msg":
                rule["to_type"] = tot
        else:
            node.notes.append(f"unknown change rule {t!r} dropped")
            continue
        out.append(rule)
    return node


def map_template(imp: Importer, nr: dict, mf_id: str):
    f: dict = {"field": _target(nr.get("field") or "payload", nr.get("fieldType") or "msg")}
    if f["field"] == "payload":
        del f["field"]
    if nr.get("syntax") == "plain":
        f["syntax"] = "plain"
    if nr.get("output") in ("json", "yaml"):
        f["output"] = nr["output"]
    f["template"] = str(nr.get("template") or "")
    return MfNode(mf_id, "template", f)


def map_delay(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    node = MfNode(mf_id, "delay", f)
    mode = nr.get("pauseType") or "delay"
    if mode in ("delay", "delayv"):
        f["delay"] = duration(seconds(nr.get("timeout", 5), nr.get("timeoutUnits") or "seconds"))
        if mode == "delayv":
            f["from_msg"] = True
    elif mode == "random":
        unit = nr.get("randomUnits") or "seconds"
        f["random"] = True
        f["min"] = duration(seconds(nr.get("randomFirst", 1), unit))
        f["max"] = duration(seconds(nr.get("randomLast", 5), unit))
    elif mode in ("rate", "queue", "timed"):
        f["mode"] = "rate"
        f["rate"] = _num(nr.get("rate"), 1)
        f["per"] = duration(max(_num(nr.get("nbRateUnits"), 1) or 1, 1) * seconds(1, nr.get("rateUnits") or "second"))
        if mode == "rate" and _truthy(nr.get("drop")):
            f["drop"] = True
        if mode in ("queue", "timed"):
            f["per_topic"] = mode
        if _num(nr.get("outputs"), 1) == 2:
            f["drop_output"] = True
            node.outputs = 2
        if _truthy(nr.get("allowrate")):
            f["rate_from_msg"] = True
    else:
        return imp.unsupported(nr, f"delay mode {mode!r} (e.g. 5.x 'burst') is not supported")
    return node


def map_trigger(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    kinds = {"pay": "payload", "nul": "nothing", "payl": "latest", "val": "str"}
    for key, op in (("first", "op1"), ("second", "op2")):
        vt = kinds.get(nr.get(f"{op}type") or "str", nr.get(f"{op}type") or "str")
        if vt in ("payload", "nothing", "latest"):
            f[f"{key}_type"] = vt
        else:
            _typed(f, key, nr.get(op, "1" if key == "first" else "0"), vt)
    d = seconds(nr.get("duration", 250), {"ms": "ms", "s": "s", "min": "min", "hr": "hr"}.get(nr.get("units"), "ms"))
    if d < 0:
        f["loop"] = True
        d = -d
    f["duration"] = duration(d)
    if _truthy(nr.get("extend")):
        f["extend"] = True
    if _truthy(nr.get("overrideDelay")):
        f["delay_from_msg"] = True
    if str(nr.get("reset") or "") != "":
        f["reset_value"] = str(nr["reset"])
    if nr.get("bytopic") == "topic":
        f["per_topic"] = True
        if nr.get("topic") and nr["topic"] != "topic":
            f["topic_property"] = _target(nr["topic"], "msg")
    outputs = _num(nr.get("outputs"), 1)
    if outputs == 2:
        f["second_output"] = True
    return MfNode(mf_id, "trigger", f, outputs=outputs)


def map_base64(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    action = {"str": "encode", "b64": "decode"}.get(nr.get("action") or "", "auto")
    if action != "auto":
        f["action"] = action
    if nr.get("property") and nr["property"] != "payload":
        f["property"] = _target(nr["property"], "msg")
    return MfNode(mf_id, "base64", f)


def map_json(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    if nr.get("action") in ("obj", "str"):
        f["action"] = nr["action"]
    if nr.get("property") and nr["property"] != "payload":
        f["property"] = _target(nr["property"], "msg")
    if _truthy(nr.get("pretty")):
        f["pretty"] = True
    return MfNode(mf_id, "json", f)


def _filename(nr: dict, f: dict) -> None:
    ftype = nr.get("filenameType") or "str"
    name = nr.get("filename") or ""
    if ftype == "str" and name:
        f["filename"] = name
    elif ftype in ("msg", "env", "flow", "global") and name:
        f["filename"] = name
        f["filename_type"] = ftype


def map_file_in(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    node = MfNode(mf_id, "file-in", f)
    _filename(nr, f)
    fmt = nr.get("format") or ""
    if fmt == "utf8":
        pass
    elif fmt == "lines":
        f["format"] = "lines"
    else:
        f["format"] = "bytes"
        if fmt == "stream":
            node.notes.append("stream mode (chunks of bytes) is read as one bytes payload")
    enc = nr.get("encoding") or "none"
    if enc not in ("none", "utf8", "utf-8"):
        f["encoding"] = enc
    if _truthy(nr.get("allProps")):
        f["all_props"] = True
    if nr.get("sendError") is None or _truthy(nr.get("sendError")):
        f["send_error"] = True  # Node-RED's runtime default when the field is missing
    return node


def map_file_out(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    _filename(nr, f)
    action = {"true": "write", "delete": "delete"}.get(str(nr.get("overwriteFile")).lower(), "append")
    if action != "append":
        f["action"] = action
    if nr.get("appendNewline") is False:
        f["add_newline"] = False
    if _truthy(nr.get("createDir")):
        f["create_dirs"] = True
    enc = nr.get("encoding") or "none"
    if enc not in ("none", "utf8", "utf-8"):
        f["encoding"] = enc
    return MfNode(mf_id, "file-out", f)


def map_request(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    node = MfNode(mf_id, "tls-request", f)
    method = str(nr.get("method") or "GET")
    f["method"] = method if method == "use" else method.upper()
    if nr.get("url"):
        f["url"] = str(nr["url"])
    tls = imp.ref(nr.get("tls"))
    if tls:
        f["tls"] = tls
    auth_type = nr.get("authType") or "basic"
    if auth_type == "bearer":
        token = imp.secret(mf_id, nr["id"], "password", "token")
        if token:
            f["auth"] = {"type": "bearer", "token": token}
    elif auth_type in ("basic", ""):
        user = (imp.creds.get(nr["id"]) or {}).get("user")
        password = imp.secret(mf_id, nr["id"], "password")
        if user or password:
            f["auth"] = {"type": "basic"}
            if user:
                f["auth"]["user"] = imp.secret(mf_id, nr["id"], "user")
            if password:
                f["auth"]["password"] = password
    elif auth_type == "digest":
        node.notes.append("digest authentication is not supported by tls-request")
    headers = {}
    for h in nr.get("headers") or []:
        if isinstance(h, dict) and h.get("keyType", "other") == "other" and h.get("valueType", "other") == "other":
            headers[str(h.get("keyValue"))] = str(h.get("valueValue"))
        elif isinstance(h, dict):
            node.notes.append(f"header {h.get('keyValue') or h.get('keyType')!r} with a typed value was dropped")
    if headers:
        f["request_headers"] = headers
    if nr.get("ret") in ("obj", "bin"):
        f["ret"] = nr["ret"]
    paytoqs = nr.get("paytoqs")
    if paytoqs in (True, "query", "body"):
        node.notes.append(f"paytoqs {paytoqs!r} (payload as query string) is not supported")
    if nr.get("proxy"):
        node.notes.append("the HTTP proxy setting was dropped")
    if not _truthy(nr.get("senderr")):
        node.notes.append("on a transport error Node-RED also sent the message on (senderr false);"
                          " meterflow only reports it to catch nodes")
    f["retry"] = {"attempts": 1}  # Node-RED does not retry
    adapter = MfNode(imp.claim(f"{mf_id}_headers"), "change", {"rules": json.loads(json.dumps(HEADERS_ADAPTER_RULES))},
                     name=HEADERS_ADAPTER_NAME)
    return node, _before(adapter, mf_id)


def map_tls_config(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    node = MfNode(mf_id, "tls-profile", f, is_config=True)
    for key in ("cert", "key", "ca"):
        if nr.get(key):
            f[key] = str(nr[key])
    if nr.get("verifyservercert") is False:
        f["verify"] = False
    if nr.get("servername"):
        f["server_name"] = str(nr["servername"])
    passphrase = imp.secret(mf_id, nr["id"], "passphrase")
    if passphrase:
        f["key_passphrase"] = passphrase
    creds = imp.creds.get(nr["id"]) or {}
    uploaded = [k for k in ("certdata", "keydata", "cadata", "p12data") if creds.get(k)]
    if uploaded or (not any(nr.get(k) for k in ("cert", "key", "ca")) and nr.get("certType") != "env"):
        node.notes.append("the certificate was uploaded into Node-RED (its credentials); save it to files and set"
                          " cert/key/ca to their paths")
    if nr.get("certType") in ("pfx", "env") or nr.get("p12"):
        node.notes.append(f"certificate type {nr.get('certType')!r} is not supported: use PEM files")
    if nr.get("alpnprotocol"):
        node.notes.append("the ALPN protocol setting was dropped")
    return node


def map_mqtt_broker(imp: Importer, nr: dict, mf_id: str):
    from urllib.parse import urlsplit

    f: dict = {}
    node = MfNode(mf_id, "mqtt-broker", f, is_config=True)
    broker = str(nr.get("broker") or "localhost")
    port = _num(nr.get("port"))
    if "://" in broker:
        u = urlsplit(broker)
        if u.scheme in ("ws", "wss"):
            node.notes.append("MQTT over WebSockets is not supported")
        broker = u.hostname or "localhost"
        port = u.port or port
    f["host"] = broker
    if port and port != 1883:
        f["port"] = int(port)
    if _truthy(nr.get("usetls")):
        tls = imp.ref(nr.get("tls"))
        if tls:
            f["tls"] = tls
        else:
            node.notes.append("TLS was on without a TLS config: add a tls-profile and set tls")
    if nr.get("clientid"):
        f["client_id"] = str(nr["clientid"])
    ka = _num(nr.get("keepalive"), 60)
    if ka not in (None, 60):
        f["keepalive"] = ka
    if nr.get("cleansession") is False:
        f["clean_session"] = False
    proto = {"3": "3.1", "4": "3.1.1", "5": "5"}.get(str(nr.get("protocolVersion") or "4"), "3.1.1")
    if proto != "3.1.1":
        f["protocol"] = proto
    user = imp.secret(mf_id, nr["id"], "user", "username")
    if user:
        f["username"] = user
    password = imp.secret(mf_id, nr["id"], "password")
    if password:
        f["password"] = password
    for key, mf_key in (("birth", "birth"), ("will", "will"), ("close", "close")):
        topic = nr.get(f"{key}Topic")
        if topic:
            msg: dict = {"topic": str(topic)}
            if nr.get(f"{key}Payload") not in (None, ""):
                msg["payload"] = str(nr[f"{key}Payload"])
            qos = _num(nr.get(f"{key}Qos"), 0)
            if qos:
                msg["qos"] = int(qos)
            if _truthy(nr.get(f"{key}Retain")):
                msg["retain"] = True
            f[mf_key] = msg
    if nr.get("autoConnect") is False:
        node.notes.append("autoConnect was off; meterflow connects at start")
    if nr.get("sessionExpiry") or nr.get("userProps"):
        node.notes.append("MQTT 5 session expiry / user properties were dropped")
    if not imp.have_creds:
        node.notes.append("if the broker needs a login, set username and password (${creds:...})")
    return node


def map_mqtt_out(imp: Importer, nr: dict, mf_id: str):
    f: dict = {"broker": imp.ref(nr.get("broker")) or str(nr.get("broker") or "")}
    node = MfNode(mf_id, "mqtt-out", f, outputs=0)
    if nr.get("topic"):
        f["topic"] = str(nr["topic"])
    qos = _num(nr.get("qos"))
    if qos is not None and str(nr.get("qos")) != "":
        f["qos"] = int(qos)
    retain = nr.get("retain")
    if retain not in (None, ""):
        f["retain"] = _truthy(retain)
    if any(nr.get(k) for k in ("respTopic", "contentType", "userProps", "correl", "expiry")):
        node.notes.append("MQTT 5 publish properties were dropped")
    return node


def map_mqtt_in(imp: Importer, nr: dict, mf_id: str):
    if nr.get("inputs") or nr.get("topicType") == "dynamic":
        return imp.unsupported(nr, "dynamic subscriptions (topics set by messages) are not supported")
    f: dict = {"broker": imp.ref(nr.get("broker")) or str(nr.get("broker") or ""), "topic": str(nr.get("topic") or "")}
    node = MfNode(mf_id, "mqtt-in", f)
    qos = _num(nr.get("qos"), 2)
    if qos != 2:
        f["qos"] = int(qos)
    dt = nr.get("datatype") or "auto"
    mapped = {"auto": "auto", "auto-detect": "auto", "utf8": "utf8", "json": "json", "buffer": "buffer"}.get(dt)
    if mapped is None:
        node.notes.append(f"datatype {dt!r} is read as auto")
        mapped = "auto"
    if dt == "auto-detect":
        node.notes.append("auto-detect also parsed JSON; meterflow's auto gives text (use datatype json)")
    if mapped != "auto":
        f["datatype"] = mapped
    return node


def map_email(imp: Importer, nr: dict, mf_id: str):
    host = str(nr.get("server") or "smtp.gmail.com")
    port = _num(nr.get("port"), 465)
    secure = nr.get("secure") is not False
    verify = nr.get("tls") is not False
    key = (host, port, secure, verify)
    extra = []
    server = imp.generated.get(key)
    if server is None:
        sf: dict = {"host": host, "port": int(port), "security": "implicit_tls" if secure else "starttls"}
        stem = slug(host)
        server = MfNode(imp.claim(stem if stem.startswith("smtp") else f"smtp_{stem}"), "smtp-server", sf, is_config=True)
        if not verify:
            sf["verify"] = False
        if not secure:
            server.notes.append("Node-RED upgraded to TLS only when the server offered STARTTLS; meterflow requires it"
                                " (security: none for a plain local relay)")
        if (nr.get("authtype") or "BASIC") == "BASIC":
            user = imp.secret(server.id, nr["id"], "userid", "username", always=True)
            password = imp.secret(server.id, nr["id"], "password", always=True)
            if user:
                sf["username"] = user
            if password:
                sf["password"] = password
        elif nr.get("authtype") == "XOAUTH2":
            server.notes.append("XOAUTH2 login is not supported")
        imp.generated[key] = server
        extra.append(server)
    f: dict = {"server": server.id}
    if nr.get("name"):
        f["to"] = str(nr["name"])  # Node-RED's e-mail 'name' is the To address
    f["subject"] = "Message from Node-RED"
    node = MfNode(mf_id, "email", f, name=str(nr.get("dname") or ""), outputs=0)
    return (node, *extra)


def map_credentials(imp: Importer, nr: dict, mf_id: str):
    props = [p for p in nr.get("props") or [] if isinstance(p, dict)]
    values = contrib_values(nr, imp.creds.get(nr["id"]))
    fields: dict = {}
    name = imp.cred_name(mf_id)
    node = MfNode(mf_id, "credentials", {"credential": name, "fields": fields})
    for p, value in zip(props, values, strict=False):
        target = _target(p.get("value"), p.get("type") or "msg")
        fld = re.sub(r"[^A-Za-z0-9_-]+", "_", str(p.get("value") or "value")).strip("_") or "value"
        fields[target] = fld
        if value is not None:
            imp.secrets.append((name, fld, value))
    missing = [fields[t] for t, v in zip(list(fields), values, strict=False) if v is None]
    if missing:
        node.notes.append(f"set the values with: meterflow creds set {name} FIELD (fields: {', '.join(missing)})")
    return node


def map_cronplus(imp: Importer, nr: dict, mf_id: str):
    options = [o for o in nr.get("options") or [] if isinstance(o, dict)]
    if not options or any((o.get("expressionType") or "cron") != "cron" for o in options):
        return imp.unsupported(nr, "only cron schedules are imported (solar events and date lists are not)")
    if len(options) > 1:
        return imp.unsupported(nr, "several schedules in one cron-plus node: split them into one inject node each")
    o = options[0]
    f: dict = {"cron": str(o.get("expression") or "")}
    node = MfNode(mf_id, "inject", f)
    if nr.get("timeZone"):
        f["tz"] = str(nr["timeZone"])
    out = str(nr.get("outputField") or "payload")
    pt = o.get("payloadType") or "default"
    props: list = []
    if pt == "default":
        node.notes.append("the payload was cron-plus's schedule status object; it is now the time (ms)")
    if pt in ("default", "date") and out == "payload":
        f["payload_type"] = "date"
        f["topic"] = str(o.get("topic") or "")
    elif pt in ("default", "date"):
        props.append({"property": out, "type": "date"})
    elif pt == "none":
        props.append({"property": out, "value": ""})
    else:
        item: dict = {"property": out}
        _typed(item, "value", o.get("payload", ""), pt, "type")
        props.append(item)
    if props:
        props.append({"property": "topic", "value": str(o.get("topic") or "")})
        f["props"] = props
    inputs = [n for n in imp.by_id.values() if any(nr["id"] in w for w in n.get("wires") or [])]
    if inputs:
        node.notes.append("cron-plus control messages (trigger, pause, add, ...) are not supported; its input wires were dropped")
    return node


def map_moment(imp: Importer, nr: dict, mf_id: str):
    f: dict = {}
    node = MfNode(mf_id, "date-format", f)
    it = nr.get("inputType") or "msg"
    inp = nr.get("input") or "payload"
    if it in ("msg", "flow", "global"):
        target = _target(inp, it)
        if target != "payload":
            f["input"] = target
    elif it == "str":
        f["input_type"] = "str"
        f["input"] = str(inp)
    else:
        f["input_type"] = "now"
    if nr.get("inTz"):
        f["input_tz"] = str(nr["inTz"])
    fmt = nr.get("format") or ""
    if fmt.lower() not in ("", "iso", "iso8601"):
        f["format"] = fmt
    out = _target(nr.get("output") or "payload", nr.get("outputType") or "msg")
    if out != "payload":
        f["output"] = out
    if nr.get("outTz") and nr.get("outTz") != nr.get("inTz"):
        f["output_tz"] = str(nr["outTz"])
    amount = _num(nr.get("adjAmount"), 0)
    if amount:
        f["adjust_amount"] = -amount if nr.get("adjDir") == "subtract" else amount
        f["adjust_unit"] = str(nr.get("adjType") or "days")
    if nr.get("topic"):
        f["topic"] = str(nr["topic"])
    if (nr.get("locale") or "C") not in ("C", "en", "en_US", "en-US", "en_GB", "en-GB"):
        node.notes.append(f"locale {nr['locale']!r}: names are written in English")
    if nr.get("fakeUTC"):
        node.notes.append("fakeUTC was dropped")
    return node


def map_ha_server(imp: Importer, nr: dict, mf_id: str):
    creds = imp.creds.get(nr["id"]) or {}
    addon = _truthy(nr.get("addon"))
    url = creds.get("host") or ("http://supervisor/core" if addon else "")
    f: dict = {"url": url or Ref("${HA_URL:-http://homeassistant.local:8123}")}
    node = MfNode(mf_id, "ha-server", f, is_config=True)
    f["token"] = imp.secret(mf_id, nr["id"], "access_token", "token", always=True) or QuotedRef(
        f"${{creds:{imp.cred_name(mf_id)}.token}}")
    if addon:
        node.notes.append("this was the Home Assistant add-on's own connection: set the token to a long-lived access"
                          " token (meterflow creds set ...), or run with the Supervisor's URL and $SUPERVISOR_TOKEN")
    if nr.get("rejectUnauthorizedCerts") is False:
        node.notes.append("certificate checks were off: add a tls-profile with verify: false if you need that")
    return node


def map_ha_service(imp: Importer, nr: dict, mf_id: str):
    server = imp.ref(nr.get("server"))
    f: dict = {"server": server or str(nr.get("server") or "")}
    node = MfNode(mf_id, "ha-service", f)
    domain, service = nr.get("service_domain") or nr.get("domain"), nr.get("service")
    if nr.get("action") and not (domain and service) and "." in str(nr["action"]):
        domain, service = str(nr["action"]).split(".", 1)
    if domain:
        f["domain"] = str(domain)
    if service:
        f["service"] = str(service)
    ent = nr.get("entityId")
    if isinstance(ent, str):
        ent = [e.strip() for e in ent.split(",") if e.strip()]
    if isinstance(ent, list) and ent:
        f["entity_id"] = ent[0] if len(ent) == 1 else [str(e) for e in ent]
    for key in ("areaId", "deviceId", "floorId", "labelId"):
        if nr.get(key):
            node.notes.append(f"{key} targets were dropped (only entity ids are supported)")
    extra = []
    data, dtype = str(nr.get("data") or "").strip(), nr.get("dataType") or "jsonata"
    if data and (dtype == "json" or (dtype == "jsonata" and _json_object(data) is not None)):
        parsed = _json_object(data)
        if parsed is None:
            node.notes.append("the service data is not a JSON object and was dropped")
        else:
            f["data"] = parsed
        if "{{" in data:
            node.notes.append("mustache templates in the service data are not rendered")
    elif data:
        adapter = MfNode(imp.claim(f"{mf_id}_data"), "change",
                         {"rules": [{"set": "payload", "to": '{"data": (' + data + ")}", "to_type": "jsonata"}]},
                         name=HA_DATA_ADAPTER_NAME)
        extra.append(_before(adapter, mf_id))
    if nr.get("outputProperties"):
        node.notes.append("output properties were dropped: the output carries Home Assistant's reply in msg.payload")
    return (node, *extra)


def _json_object(text: str) -> dict | None:
    try:
        v = json.loads(text)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def map_state_changed(imp: Importer, nr: dict, mf_id: str):
    """server-state-changed -> mqtt-in on HA's mqtt_statestream topic (only with --ha-statestream)."""
    brokers = [n for n in imp.by_id.values() if n["type"] == "mqtt-broker"]
    entity = str(nr.get("entityidfilter") or nr.get("entityId") or "")
    if len(brokers) != 1 or "." not in entity or (nr.get("entityidfiltertype") or "exact") != "exact":
        return imp.unsupported(nr, "--ha-statestream needs exactly one mqtt-broker and one exact entity id")
    domain, obj = entity.split(".", 1)
    topic = f"{imp.ha_statestream.rstrip('/')}/{domain}/{obj}/state"
    node = MfNode(mf_id, "mqtt-in", {"broker": imp.idmap[brokers[0]["id"]], "topic": topic, "datatype": "utf8"})
    node.notes.append("was a Home Assistant state trigger: now HA's mqtt_statestream topic; the payload is the"
                      " state text ('on'/'off'), not a boolean, and every published state fires")
    return node


MAPPERS = {
    "inject": map_inject, "debug": map_debug, "catch": map_catch, "status": map_status, "complete": map_complete,
    "link in": map_link_in, "link out": map_link_out, "link call": map_link_call, "comment": map_comment,
    "junction": map_junction, "function": map_function, "switch": map_switch, "change": map_change,
    "template": map_template, "delay": map_delay, "trigger": map_trigger, "base64": map_base64, "json": map_json,
    "file in": map_file_in, "file": map_file_out, "http request": map_request, "https-node": map_request,
    "tls-config": map_tls_config, "mqtt-broker": map_mqtt_broker, "mqtt out": map_mqtt_out, "mqtt in": map_mqtt_in,
    "e-mail": map_email, "credentials": map_credentials, "cronplus": map_cronplus, "moment": map_moment,
    "server": map_ha_server, "api-call-service": map_ha_service,
}


# ---- YAML out ---------------------------------------------------------------------------------------
_CODE_FIELDS = {"code", "initialize", "finalize", "template", "text"}


def _escape(value: Any, code: bool = False) -> Any:
    """``${`` -> ``$${`` in text from Node-RED, so the loader does not substitute it.

    A whole ``${NAME}`` in a setting is kept: Node-RED substitutes those from the
    environment too."""
    if isinstance(value, Ref):
        return value
    if isinstance(value, str):
        if not code and WHOLE_ENV.fullmatch(value):
            return value
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {k: _escape(v, code) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v, code) for v in value]
    return value


def node_data(n: MfNode) -> dict:
    """The node as the YAML mapping it becomes (escaped, in field order)."""
    d: dict = {"id": n.id, "type": n.type}
    if n.name:
        d["name"] = _escape(n.name)
    if n.disabled:
        d["disabled"] = True
    for k, v in n.fields.items():
        d[k] = _escape(v, code=k in _CODE_FIELDS)
    if n.info:
        d["info"] = _escape(n.info, code=True)
    if n.wires is not None and any(n.wires):
        d["wires"] = n.wires[0] if len(n.wires) == 1 else n.wires
    return d


def _plain_ok(s: str, flow: bool) -> str | None:
    from .. import yamlpos

    if not s or s != s.strip() or "\n" in s or any(ord(c) < 32 for c in s):
        return None
    if flow and any(c in s for c in ",[]{}"):
        return None
    if s[0] in "!&*?|>%@`\"'#-:[]{}," or ": " in s or " #" in s or s.endswith(":"):
        return None
    try:
        back = yamlpos.load(f"k: {s}\n").data
    except Exception:
        return None
    return s if back == {"k": s} else None


def scalar(v: Any, flow: bool = False) -> str:
    if isinstance(v, QuotedRef):
        return json.dumps(str(v), ensure_ascii=False)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else json.dumps(str(v))
    s = str(v)
    return _plain_ok(s, flow) or json.dumps(s, ensure_ascii=False)


def flow_style(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{scalar(k, True)}: {flow_style(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(flow_style(x) for x in v) + "]"
    return scalar(v, True)


def _is_flat(v: Any) -> bool:
    return (not isinstance(v, dict | list) or (isinstance(v, list) and all(not isinstance(x, dict | list) for x in v))) \
        and _flow_ok(v)


def _flow_ok(v: Any) -> bool:
    """False when flow style would have to quote an unquoted ``${...}`` (quoting changes its typing)."""
    if isinstance(v, dict):
        return all(_flow_ok(x) for x in v.values())
    if isinstance(v, list):
        return all(_flow_ok(x) for x in v)
    if isinstance(v, Ref) and not isinstance(v, QuotedRef) and "${" in v:
        return _plain_ok(str(v), True) is not None
    return True


def _block_text(key: str, s: str, pad: str) -> list[str]:
    """A literal block scalar for multi-line text (falls back to a quoted string when it cannot)."""
    if any(ord(c) < 32 and c not in "\n\t" for c in s) or "\r" in s or any(ln != ln.rstrip(" \t") for ln in s.split("\n")):
        return [f"{pad}{key}: {json.dumps(s, ensure_ascii=False)}"]
    body = s.rstrip("\n")
    trailing = len(s) - len(body)
    chomp = "-" if trailing == 0 else "" if trailing == 1 else "+"
    lines = body.split("\n")
    indicator = "2" if lines and lines[0][:1] in (" ", "\t") else ""
    if "\t" in "".join(ln[:1] for ln in lines if ln):
        return [f"{pad}{key}: {json.dumps(s, ensure_ascii=False)}"]
    out = [f"{pad}{key}: |{indicator}{chomp}"]
    out += [f"{pad}  {ln}" if ln else "" for ln in lines]
    if chomp == "+":
        out += [""] * (trailing - 1)
    return out


def _emit(key: str, v: Any, pad: str) -> list[str]:
    k = scalar(key, True)
    if isinstance(v, str) and "\n" in v:
        return _block_text(k, v, pad)
    if not isinstance(v, dict | list):
        return [f"{pad}{k}: {scalar(v)}"]
    if isinstance(v, dict) and v and not all(_is_flat(x) for x in v.values()):
        out = [f"{pad}{k}:"]
        for kk, vv in v.items():
            out += _emit(kk, vv, pad + "  ")
        return out
    if isinstance(v, list) and v and (any(isinstance(x, dict) for x in v) or not _flow_ok(v)):
        out = [f"{pad}{k}:"]
        for item in v:
            if not isinstance(item, dict):
                out.append(f"{pad}  - {scalar(item) if not isinstance(item, list) else flow_style(item)}")
            elif any(isinstance(x, str) and "\n" in x for x in item.values()) or not _flow_ok(item):
                first = True
                for kk, vv in item.items():
                    lines = _emit(kk, vv, pad + "    ")
                    if first:
                        lines[0] = f"{pad}  - " + lines[0].lstrip()
                        first = False
                    out += lines
            else:
                out.append(f"{pad}  - {flow_style(item)}")
        return out
    line = f"{pad}{k}: {flow_style(v)}"
    if len(line) > 110 and isinstance(v, dict) and v:
        out = [f"{pad}{k}:"]
        for kk, vv in v.items():
            out += _emit(kk, vv, pad + "  ")
        return out
    return [line]


def emit_node(n: MfNode, use_key: bool = False) -> list[str]:
    lines = [f"  # note: {note}" for note in n.notes]
    d = node_data(n)
    if use_key and n.nodered_id:
        d = {"id": d.pop("id"), "nodered_id": n.nodered_id, **d}
    first = True
    for k, v in d.items():
        part = _emit(k, v, "    ")
        if first:
            part[0] = "  - " + part[0].lstrip()
            if n.nodered_id and not use_key:
                pos = f" @{_coord(n.pos[0])},{_coord(n.pos[1])}" if n.pos else ""
                part[0] += f"  # nodered: {n.nodered_id}{pos}"
            first = False
        lines += part
    return lines


def _coord(v: Any) -> str:
    n = _num(v, 0)
    return str(n)


def emit(imp: Importer) -> str:
    from .. import flowfile

    use_key = "nodered_id" in flowfile.RESERVED
    lines = ["# Imported from Node-RED by `meterflow import`.",
             "# The Node-RED id (and editor position) of each node is in the comment on its id line.",
             "meterflow: 1", f"name: {scalar(imp.name)}"]
    for note in imp.global_notes:
        lines.insert(-2, f"# note: {note}")
    configs = [n for n in imp.out if n.is_config]
    nodes = [n for n in imp.out if not n.is_config]
    if configs:
        lines += ["", "config:"]
        for n in configs:
            lines += emit_node(n, use_key)
    lines += ["", "nodes:" if nodes else "nodes: []"]
    for i, n in enumerate(nodes):
        if i and (n.notes or nodes[i - 1].notes):
            lines.append("")
        lines += emit_node(n, use_key)
    text = "\n".join(lines) + "\n"
    _self_check(imp, text)
    return text


def _self_check(imp: Importer, text: str) -> None:
    """The YAML we wrote must read back as the nodes we meant (an emitter bug must not hide)."""
    from .. import yamlpos

    data = yamlpos.load(text, "<import>").data
    got = (data.get("config") or []) + (data.get("nodes") or [])
    want = [node_data(n) for n in imp.out if n.is_config] + [node_data(n) for n in imp.out if not n.is_config]
    for g, w in zip(got, want, strict=True):
        g.pop("nodered_id", None)
        if g != w:
            raise AssertionError(f"meterflow import wrote YAML that reads back differently for node {w.get('id')}:"
                                 f" {g!r} != {w!r}")


def import_flows(flows: Any, **kw) -> ImportResult:
    """flows.json content (parsed) -> :class:`ImportResult` (YAML text, secrets, notes)."""
    return Importer(flows, **kw).run()
