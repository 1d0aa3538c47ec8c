"""Safe YAML loading that remembers where every value came from.

PyYAML's YAML 1.1 resolver silently retypes what users write (``12:30`` -> 750,
``0123`` -> 83, ``off`` -> False) and keeps the last of duplicate keys.  We compose the
node tree with the safe loader and build values ourselves with YAML 1.2 core rules:
only ``true``/``false``, ``null``/``~``, plain decimal numbers and floats are typed;
everything else (``12:30``, ``0123``, ``off``, ``0x1F``) stays the string that was
written.  Duplicate keys are errors.  Each value's line and column is kept in
``Document.marks`` under its path, so a validation error names file:line:col.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # the C composer is several times faster when libyaml is present
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"[-+]?(0|[1-9][0-9]*)?(\.[0-9]+)?([eE][-+]?[0-9]+)?$")
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}

Path = tuple


@dataclass
class Mark:
    line: int  # 1-based
    col: int  # 1-based


class YamlError(Exception):
    """A problem found while reading YAML; carries its position."""

    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


@dataclass
class Document:
    data: Any
    file: str
    marks: dict = field(default_factory=dict)  # path -> Mark of the value
    key_marks: dict = field(default_factory=dict)  # path -> Mark of the mapping key
    quoted: set = field(default_factory=set)  # paths of quoted (or !!str) scalars: always strings

    def mark(self, path: Path, key: bool = False) -> Mark:
        """Position of ``path``, or of its nearest ancestor that exists."""
        path = tuple(path)
        while path:
            m = (self.key_marks if key else self.marks).get(path) or self.marks.get(path)
            if m:
                return m
            path = path[:-1]
        return self.marks.get((), Mark(1, 1))


def _mark(node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _scalar(node) -> Any:
    if not _plain(node):
        return node.value  # quoted or block scalar
    return _scalar_text(node.value)


def _scalar_text(text: str) -> Any:
    """YAML 1.2 core typing of a plain scalar's text."""
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text) and any(c.isdigit() for c in text):
        return float(text)
    return text


def _plain(node) -> bool:
    # PyYAML gives plain scalars the tag its own resolver chose; we ignore that choice.
    # (libyaml reports '' as the style of a plain scalar, the Python loader None.)
    return not node.style


_KNOWN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_STR = "tag:yaml.org,2002:str"
_resolver = yaml.resolver.Resolver()


def _implicit(node) -> bool:
    """The tag is the one PyYAML's resolver chose for a plain scalar (we retype those ourselves)."""
    return _plain(node) and _resolver.resolve(yaml.ScalarNode, node.value, (True, False)) == node.tag


def _explicit_str(node) -> bool:
    """``!!str 123``: a plain scalar whose str tag is not what the resolver would pick."""
    return node.tag == _STR and _resolver.resolve(yaml.ScalarNode, node.value, (True, False)) != _STR


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self._open: set[int] = set()  # nodes being built: an alias back into one is recursive

    def build(self, node, path: Path) -> Any:
        self.doc.marks[path] = _mark(node)
        if node.tag not in _KNOWN_TAGS and not (isinstance(node, yaml.ScalarNode) and _implicit(node)):
            raise YamlError(f"unsupported YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')}", *_pos(node))
        if isinstance(node, yaml.ScalarNode):
            if not _plain(node) or _explicit_str(node):
                self.doc.quoted.add(path)
                return node.value
            return _scalar(node)
        if id(node) in self._open:
            raise YamlError("recursive alias: an anchor cannot contain an alias to itself", *_pos(node))
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node, path: Path) -> dict:
        out: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                value = self.build(value_node, path + ("<<",))
                for m in value if isinstance(value, list) else [value]:
                    if not isinstance(m, dict):
                        raise YamlError("'<<' merges a mapping or a list of mappings", *_pos(value_node))
                    for k, v in m.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be plain values", *_pos(key_node))
            key = _scalar(key_node) if _plain(key_node) else key_node.value
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = key_node.value
            if key in out:
                first = self.doc.key_marks[path + (key,)]
                raise YamlError(f"duplicate key {key!r} (first defined at line {first.line})", *_pos(key_node))
            self.doc.key_marks[path + (key,)] = _mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        for k, v in merged.items():  # keys written in the mapping win over merged ones
            out.setdefault(k, v)
        return out


def _pos(node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(text: str, file: str = "<string>") -> Document:
    """Parse one YAML document.  Raises :class:`YamlError` with a position."""
    doc = Document(None, file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if e.context and e.context not in problem:
            problem = f"{problem} ({e.context})"
        raise YamlError(f"YAML syntax: {problem}", mark.line + 1 if mark else 1, mark.column + 1 if mark else 1) from None
    except yaml.YAMLError as e:
        raise YamlError(f"YAML: {e}", 1, 1) from None
    if root is not None:
        doc.data = _Builder(doc).build(root, ())
    return doc
