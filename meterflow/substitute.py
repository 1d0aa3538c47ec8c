"""``${NAME}``, ``${NAME:-default}`` and ``${scheme:key}`` references in flow files.

Environment references are resolved when the flow loads.  ``${creds:smt.password}``
(and any scheme a plugin registers through ``meterflow_substitutions``) resolves
through that scheme's resolver, and its value is registered as a secret.  ``$${X}``
is a literal ``${X}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import redact
from .errors import FlowError
from .yamlpos import _scalar_text

_REF = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_UNCLOSED = re.compile(r"(?<!\$)\$\{")


class Unresolved(Exception):
    def __init__(self, message: str, secret: bool = False):
        super().__init__(message)
        self.secret = secret  # a ${scheme:key} lookup failed: the store, not the file, is wrong


def substitute(text: str, env: Mapping[str, str], schemes: Mapping[str, Callable[[str], str]],
               typed: bool = True) -> Any:
    """Resolve every reference in ``text``.  An unquoted value that is one whole reference
    gets YAML 1.2 typing (``${PORT:-1883}`` is the number 1883; ``"${ESIID}"`` stays a
    string); raises :class:`Unresolved`."""
    if "${" not in text:
        return text

    def one(m: re.Match) -> str:
        if m.group(1):
            return "${" + m.group(2) + "}"
        body = m.group(2)
        scheme, sep, key = body.partition(":")
        if sep and scheme in schemes and not key.startswith("-"):
            if schemes[scheme] is None:
                return m.group(0)  # a disabled node: its secrets are not looked up
            try:
                value = schemes[scheme](key)
            except FlowError as e:
                raise Unresolved(str(e), secret=True) from None
            redact.add(value)
            return value
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            known = ", ".join(sorted(schemes)) or "none"
            raise Unresolved(f"invalid reference ${{{body}}}: write ${{NAME}}, ${{NAME:-default}} or ${{scheme:key}}"
                             f" (schemes: {known})")
        if name in env and not (sep and env[name] == ""):  # ${X:-d}: empty counts as unset, as in sh
            value = env[name]
            if redact.is_secret_name(name):
                redact.add(value)
            return value
        if sep:
            return default
        raise Unresolved(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    whole = _REF.fullmatch(text)
    result = _REF.sub(one, text)
    if _UNCLOSED.search(_REF.sub("", text)):
        raise Unresolved(f"unterminated reference in {text!r}: write ${{NAME}} (or $${{ for a literal ${{)")
    return _scalar_text(result) if typed and whole and not whole.group(1) else result


def substitute_tree(value: Any, path: tuple, problems: list, env=None, schemes=None,
                    quoted: set | frozenset = frozenset()) -> Any:
    """Apply :func:`substitute` to every string in a nested value; record problems by path.

    A secret missing from the store is marked ``missing:``: the flow file is fine, this
    machine is not set up yet (a warning for ``check``, an error for ``run``)."""
    env = os.environ if env is None else env
    schemes = schemes or {}
    if isinstance(value, str):
        try:
            return substitute(value, env, schemes, typed=path not in quoted)
        except Unresolved as e:
            problems.append((path, f"missing: {e}" if e.secret else str(e)))
            return value
    # A subtree without references is returned as it is, not copied: the instances of one
    # flow then share everything the environment does not change.
    if isinstance(value, dict):
        out = {k: substitute_tree(v, path + (k,), problems, env, schemes, quoted) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if isinstance(value, list):
        items = [substitute_tree(v, path + (i,), problems, env, schemes, quoted) for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
