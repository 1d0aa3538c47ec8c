"""Mermaid and Graphviz renderings of a flow's wiring, links and catch/status/complete edges."""

from __future__ import annotations

from .flowfile import FlowSpec
from .redact import redact

_SCOPED = {"catch", "catch-protocol-error", "status", "complete"}


def edges(spec: FlowSpec) -> list[tuple[str, str, str, str]]:
    """(from, to, label, style) where style is wire | link | scope | config."""
    out = []
    ids = {n.id for n in spec.nodes}
    for n in spec.nodes:
        names = n.cls.output_names(n.config) if n.cls else []
        for i, targets in enumerate(n.wires):
            label = names[i] if len(names) > 1 and i < len(names) else ""
            out.extend((n.id, t, label, "wire") for t in targets if t in ids)
        if n.type == "link-out":
            out.extend((n.id, t, "", "link") for t in n.config.get("links") or [] if t in ids)
        elif n.type == "link-in":
            out.extend((s, n.id, "", "link") for s in n.config.get("links") or [] if s in ids)
        elif n.type == "link-call":
            out.extend((n.id, t, "call", "link") for t in n.config.get("links") or [] if t in ids)
        if n.type in _SCOPED:
            scope = n.config.get("scope")
            kinds = n.config.get("kinds") or (["tls"] if n.type == "catch-protocol-error" else [])
            label = ",".join(kinds)
            if isinstance(scope, list):
                out.extend((s, n.id, label, "scope") for s in scope if s in ids)
        elif n.cls is not None and not n.is_config:
            for _path, ref, want in n.cls.references(n.config):
                if want is not None and ref in ids:
                    out.append((ref, n.id, "", "config"))
    # de-duplicate link edges named from both sides
    seen, unique = set(), []
    for e in out:
        if e not in seen:
            seen.add(e)
            unique.append(e)
    return unique


def _label(n) -> str:
    text = f"{n.name or n.id}\\n{n.type}" if n.name else f"{n.id}\\n{n.type}"
    return redact(text).replace('"', "'")


def mermaid(spec: FlowSpec) -> str:
    lines = ["flowchart LR"]
    for n in spec.nodes:
        text = _label(n).replace("\\n", "<br/>")
        shape = ('[("', '")]') if n.is_config else ('{{"', '"}}') if n.type in _SCOPED else ('["', '"]')
        lines.append(f"  {_mid(n.id)}{shape[0]}{text}{' (disabled)' if n.disabled else ''}{shape[1]}")
        if n.type in _SCOPED and n.config.get("scope") in (None, "all"):
            lines.append(f"  %% {n.id} watches every node of the flow")
    arrows = {"wire": "-->", "link": "-.->", "scope": "-..->", "config": "---"}
    for a, b, label, style in edges(spec):
        arrow = arrows[style]
        lines.append(f"  {_mid(a)} {arrow}{'|' + label + '|' if label else ''} {_mid(b)}")
    return "\n".join(lines) + "\n"


def dot(spec: FlowSpec) -> str:
    lines = [f'digraph "{spec.name}" {{', "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    for n in spec.nodes:
        shape = "cylinder" if n.is_config else "hexagon" if n.type in _SCOPED else "box"
        style = ', style=dashed' if n.disabled else ""
        lines.append(f'  "{n.id}" [label="{_label(n)}", shape={shape}{style}];')
    styles = {"wire": "", "link": ' style=dashed', "scope": ' style=dotted color=red', "config": ' style=dotted arrowhead=none'}
    for a, b, label, style in edges(spec):
        lab = f' label="{label}"' if label else ""
        lines.append(f'  "{a}" -> "{b}" [{(lab + styles[style]).strip()}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mid(node_id: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in node_id)
