"""Flow files: YAML in, a validated :class:`FlowSpec` out, every problem with file:line:col.

Format (see docs/flow-format.md)::

    meterflow: 1                 # version header
    name: smt
    context: {store: file, dir: state}
    include: [common.yaml]       # shared config nodes / nodes
    config:   [ {id, type, ...fields} ]
    nodes:    [ {id, type, name, wires, disabled, ...fields} ]

Validation never stops at the first problem: ``meterflow check`` prints them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import redact, yamlpos
from .schema import Field, defaults, did_you_mean, secret_values, validate
from .substitute import substitute_tree

VERSION = 1
RESERVED = ("id", "type", "name", "wires", "disabled", "info")

TOP_SCHEMA = {
    "meterflow": Field("int", "format version; must be 1", required=True),
    "name": Field("str", "flow name (defaults to the file name); names the context directory"),
    "description": Field("str", "free text"),
    "context": Field("map", "where context lives", fields={
        "store": Field("str", "memory or file", choices=("memory", "file"), default="memory"),
        "dir": Field("str", "directory of the file store, relative to the flow file"),
        "flush": Field("duration", "write changes this long after the first one", default=1.0),
    }),
    "include": Field("list", "other YAML files whose config and nodes join this flow", item=Field("str")),
    "config": Field("list", "config nodes (brokers, TLS profiles, servers)", item=Field("map", extra=True, fields={})),
    "nodes": Field("list", "the flow's nodes", item=Field("map", extra=True, fields={})),
}


@dataclass(order=True)
class Problem:
    file: str
    line: int
    col: int
    message: str = field(compare=False)
    severity: str = field(default="error", compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"


@dataclass
class NodeSpec:
    id: str
    type: str
    name: str
    config: dict
    wires: list[list[str]]
    disabled: bool
    cls: type | None
    doc: yamlpos.Document
    path: tuple  # where the node's mapping sits in doc

    @property
    def is_config(self) -> bool:
        return bool(self.cls is not None and self.cls.is_config)

    def mark(self, sub: tuple = ()) -> yamlpos.Mark:
        return self.doc.mark(self.path + tuple(sub))


@dataclass
class FlowSpec:
    file: str
    name: str
    context: dict = field(default_factory=dict)
    nodes: list[NodeSpec] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def node(self, node_id: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.id == node_id), None)


class _Loader:
    def __init__(self, registry, env, file: str, for_run: bool = True):
        self.registry = registry
        self.for_run = for_run
        self.env = os.environ if env is None else env
        self.spec = FlowSpec(file=file, name=Path(file).stem)
        self.seen_files: set[str] = set()

    def problem(self, doc: yamlpos.Document, path: tuple, message: str, severity="error", key=False):
        m = doc.mark(path, key=key)
        self.spec.problems.append(Problem(doc.file, m.line, m.col, message, severity))

    # ---- files -------------------------------------------------------------------------
    def read(self, file: str, text: str | None, included: bool) -> yamlpos.Document | None:
        if text is None:
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                self.spec.problems.append(Problem(file, 1, 1, f"cannot read flow file: {reason}"))
                return None
        try:
            doc = _parse(text, file)
        except yamlpos.YamlError as e:
            self.spec.problems.append(Problem(file, e.line, e.col, e.message))
            return None
        if doc.data is None:
            doc.data = {}
        if not isinstance(doc.data, dict):
            self.problem(doc, (), "a flow file is a mapping with 'meterflow: 1', 'nodes' and optionally 'config'")
            return None
        schema = dict(TOP_SCHEMA)
        if included:
            schema["meterflow"] = Field("int", required=False)
        for path, msg in validate(doc.data, schema):
            if path == () and "meterflow" in msg:
                msg = "missing version header: add 'meterflow: 1' as the first line"
            self.problem(doc, path, msg, key=len(path) == 1 and "unknown field" in msg)
        version = doc.data.get("meterflow")
        if isinstance(version, int) and not isinstance(version, bool) and version != VERSION:
            self.problem(doc, ("meterflow",), f"unsupported format version {version}; this meterflow reads version {VERSION}")
        return doc

    def load(self, file: str, text: str | None) -> FlowSpec:
        doc = self.read(file, text, included=False)
        if doc is None:
            return self.spec
        data = doc.data
        if isinstance(data.get("name"), str):
            self.spec.name = data["name"]
        ctx = data.get("context") if isinstance(data.get("context"), dict) else {}
        problems: list = []
        ctx = substitute_tree(ctx, ("context",), problems, self.env, {})
        for path, msg in problems:
            self.problem(doc, path, msg)
        self.spec.context = defaults(TOP_SCHEMA["context"].fields, ctx)
        if isinstance(self.spec.context.get("dir"), str) and self.spec.context["dir"]:
            self.spec.context["dir"] = str(Path(file).parent / self.spec.context["dir"])
        self.seen_files.add(os.path.abspath(file))
        self.collect(doc)
        self.cross_check()
        self.spec.problems.sort()
        return self.spec

    def collect(self, doc: yamlpos.Document) -> None:
        data = doc.data
        includes = data.get("include")
        for i, inc in enumerate(includes if isinstance(includes, list) else []):
            if not isinstance(inc, str):
                continue
            target = str(Path(doc.file).parent / inc)
            if os.path.abspath(target) in self.seen_files:
                self.problem(doc, ("include", i), f"{inc!r} is included more than once (or includes itself)")
                continue
            self.seen_files.add(os.path.abspath(target))
            sub = self.read(target, None, included=True)
            if sub is None:
                last = self.spec.problems.pop()
                self.problem(doc, ("include", i), f"include {inc!r}: {last.message}"
                             + ("" if last.file == doc.file else f" ({last.file}:{last.line}:{last.col})"))
                continue
            self.collect(sub)
        for section in ("config", "nodes"):
            items = data.get(section)
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    self.node(doc, (section, i), item, section == "config")

    # ---- one node ----------------------------------------------------------------------
    def node(self, doc, path: tuple, raw: dict, in_config: bool) -> None:
        problems: list[tuple[tuple, str]] = []
        original = raw
        schemes = self.registry.substitutions
        n = len(path)
        quoted = {q[n:] for q in doc.quoted if q[:n] == path}
        if "disabled" in raw:
            disabled = substitute_tree(raw["disabled"], ("disabled",), problems, self.env, {}, quoted)
            if disabled is not raw["disabled"]:
                raw = dict(raw, disabled=disabled)
            if disabled is True:
                # A disabled node is not created: do not require its secrets (e.g. an
                # unconfigured Home Assistant server in a shared flow).
                schemes = dict.fromkeys(schemes)
        raw = substitute_tree(raw, (), problems, self.env, schemes, quoted)
        # The environment changed nothing in this node: reuse what an earlier load of the
        # same document built (many instances of one flow, or check then run).
        key = (id(raw), id(self.registry), in_config)
        hit = _built.get(key) if raw is original else None
        if hit is not None and hit[0] is raw:
            built, own = hit[1]
        else:
            own: list[tuple[tuple, str]] = []
            built = self.build(raw, in_config, path, own)
            if raw is original:
                _built[key] = (raw, (built, own))
                if len(_built) > 4096:
                    _built.pop(next(iter(_built)))
        for sub, msg in problems + own:
            severity = "error"
            if msg.startswith("warning: "):  # a node's check() may downgrade a problem
                severity, msg = "warning", msg[len("warning: "):]
            elif msg.startswith("missing: "):  # not set up on this machine yet: fatal only for run
                severity, msg = ("error" if self.for_run else "warning"), msg[len("missing: "):]
            self.problem(doc, path + tuple(sub), msg, severity, key=bool(sub) and "unknown field" in msg)
        if built is not None:
            self.spec.nodes.append(NodeSpec(*built, doc, path))

    def build(self, raw: dict, in_config: bool, path: tuple, problems: list) -> tuple | None:
        """NodeSpec fields (without doc and path) from a substituted mapping, or None."""
        node_id, type_name = raw.get("id"), raw.get("type")
        ok = True
        if not isinstance(node_id, str) or not node_id:
            problems.append((("id",) if "id" in raw else (), "every node needs an 'id' (a string)"))
            node_id, ok = f"#{path[1]}", False
        if not isinstance(type_name, str):
            problems.append((("type",) if "type" in raw else (), "every node needs a 'type'"))
            cls = None
        else:
            cls = self.registry.types.get(type_name)
            if cls is None:
                problems.append((("type",), f"unknown node type {type_name!r}{did_you_mean(type_name, self.registry.types)}"
                                 " (see `meterflow nodes`)"))
        name = raw.get("name", "")
        if not isinstance(name, str):
            problems.append((("name",), "'name' must be a string"))
            name = str(name)
        disabled = raw.get("disabled", False)
        if not isinstance(disabled, bool):
            problems.append((("disabled",), f"'disabled' must be true or false, got {disabled!r}"))
            disabled = False
        config = {k: v for k, v in raw.items() if k not in RESERVED}
        wires: list[list[str]] = []
        if cls is not None:
            if cls.is_config and not in_config:
                problems.append((("type",), f"{type_name!r} is a config node: list it under 'config:'"))
            if not cls.is_config and in_config:
                problems.append((("type",), f"{type_name!r} is not a config node: list it under 'nodes:'"))
            problems.extend(validate(config, cls.schema))
            config = defaults(cls.schema, config)
            for secret in secret_values(cls.schema, config):
                redact.add(secret)
            if not any(p[1].startswith("field") or "unknown field" in p[1] or "missing" in p[1] for p in problems):
                try:
                    problems.extend(cls.check(config))
                except Exception as e:  # a plugin's check must not crash `meterflow check`
                    problems.append(((), f"{type_name}: config check failed: {type(e).__name__}: {e}"))
            if "wires" in raw:
                if cls.is_config:
                    problems.append((("wires",), "config nodes have no wires"))
                else:
                    wires = self.wires(raw["wires"], cls, config, problems)
        if cls is None and "wires" in raw:
            wires = [_all_ids(raw["wires"])]  # still check the ids of an unknown type's wires
        if not ok:
            return None
        return (node_id, type_name if isinstance(type_name, str) else "?", name, config, wires, disabled, cls)

    def wires(self, raw: Any, cls, config: dict, problems: list) -> list[list[str]]:
        try:
            names = cls.output_names(config)
        except Exception:
            names = ["0"]
        out: list[list[str]] = [[] for _ in names]

        def ids(value, p) -> list[str]:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append((p, "wires list node ids (strings)"))
                return []
            return value

        if isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(v, str) for v in raw)):
            if not names:
                problems.append((("wires",), f"a {cls.type} node has no outputs"))
                return []
            out[0] = ids(raw, ("wires",))
        elif isinstance(raw, list):
            for i, v in enumerate(raw):
                if i >= len(names):
                    problems.append((("wires", i), f"this {cls.type} node has {len(names)} output(s); wires give {len(raw)}"))
                    break
                out[i] = [] if v is None else ids(v, ("wires", i))
        elif isinstance(raw, dict):
            for key, v in raw.items():
                k = str(key)
                if k not in names:
                    problems.append((("wires", key), f"no output named {k!r}; outputs: {', '.join(names)}"
                                     f"{did_you_mean(k, names)}"))
                    continue
                out[names.index(k)] = ids(v, ("wires", key))
        elif raw is not None:
            problems.append((("wires",), "wires are a list of node ids, a list per output, or a mapping of output name to ids"))
        return out

    # ---- whole flow ----------------------------------------------------------------------
    def cross_check(self) -> None:
        by_id: dict[str, NodeSpec] = {}
        for n in self.spec.nodes:
            if n.id in by_id:
                first = by_id[n.id].mark(("id",))
                self.problem(n.doc, n.path + ("id",), f"duplicate id {n.id!r} (first used at {by_id[n.id].doc.file}:{first.line})")
            else:
                by_id[n.id] = n
        used: set[str] = set()
        for n in self.spec.nodes:
            for o, targets in enumerate(n.wires):
                for j, t in enumerate(targets):
                    target = by_id.get(t)
                    if target is None:
                        self.problem(n.doc, n.path + ("wires",) + self._wire_path(n, o, j),
                                     f"wire to unknown node {t!r}{did_you_mean(t, [x.id for x in self.spec.nodes if not x.is_config])}")
                    elif target.is_config:
                        self.problem(n.doc, n.path + ("wires",) + self._wire_path(n, o, j), f"cannot wire to config node {t!r}")
            if n.cls is None:
                continue
            try:
                refs = n.cls.references(n.config)
            except Exception:
                refs = []
            for sub, ref, want in refs:
                if not isinstance(ref, str):
                    used.update(_all_ids(ref))  # wrong shape (already reported), but clearly meant
                    continue
                used.add(ref)
                target = by_id.get(ref)
                where = n.path + tuple(sub)
                if want is None or want.startswith("node:"):
                    kind = want[5:] if want else None
                    candidates = [x.id for x in self.spec.nodes if not x.is_config and (kind is None or x.type == kind)]
                    if target is None or target.is_config:
                        label = f"{kind} node" if kind else "node"
                        self.problem(n.doc, where, f"unknown {label} {ref!r}{did_you_mean(ref, candidates)}")
                    elif kind and target.type != kind:
                        self.problem(n.doc, where, f"{ref!r} is {_a(target.type)}, expected {_a(kind)} node")
                    continue
                wanted = want.split("|")
                candidates = [x.id for x in self.spec.nodes if x.type in wanted]
                if target is None:
                    self.problem(n.doc, where, f"unknown {want} config node {ref!r}{did_you_mean(ref, candidates)}")
                elif target.type not in wanted:
                    self.problem(n.doc, where, f"{ref!r} is {_a(target.type)}, expected {_a(want)}")
                elif target.disabled and not n.disabled:
                    self.problem(n.doc, where, f"config node {ref!r} is disabled, but {n.id!r} uses it"
                                 " (disable both, or neither)")
        for n in self.spec.nodes:
            if n.is_config and n.id not in used and not n.disabled:
                self.problem(n.doc, n.path + ("id",), f"config node {n.id!r} is not used by any node", severity="warning")

    @staticmethod
    def _wire_path(n: NodeSpec, out: int, j: int) -> tuple:
        raw = n.doc.data
        for p in n.path + ("wires",):
            raw = raw[p] if isinstance(raw, dict | list) and (p in raw if isinstance(raw, dict) else p < len(raw)) else None
        if isinstance(raw, str):
            return ()
        if isinstance(raw, list) and raw and all(isinstance(v, str) for v in raw):
            return (j,)
        if isinstance(raw, dict):
            names = n.cls.output_names(n.config) if n.cls else []
            for key in raw:
                if str(key) == (names[out] if out < len(names) else None):
                    return (key,) if isinstance(raw[key], str) else (key, j)
            return ()
        if isinstance(raw, list) and out < len(raw):
            return (out,) if isinstance(raw[out], str) else (out, j)
        return ()


#: (id of a node mapping, id of the registry, in config:) -> (mapping, (NodeSpec fields, problems))
_built: dict[tuple, tuple] = {}


@lru_cache(maxsize=16)
def _parse(text: str, file: str) -> yamlpos.Document:
    """Parsed once per text: instances of one flow share the document and its marks.
    (Nothing mutates a Document after loading; node configs are built as copies.)"""
    return yamlpos.load(text, file)


def _all_ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [i for v in value for i in _all_ids(v)] if isinstance(value, list) else []


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def load_flow(file: str, registry=None, *, text: str | None = None, env=None, for_run: bool = True) -> FlowSpec:
    """Load and validate a flow file (or ``text`` given for ``file``).

    ``for_run=False`` is ``meterflow check``: what this machine lacks (a secret in the
    credential store, a certificate file) is a warning there — the file itself is valid —
    and an error when loading to run."""
    if registry is None:
        from .plugins import registry as default_registry

        registry = default_registry()
    return _Loader(registry, env, str(file), for_run).load(str(file), text)
