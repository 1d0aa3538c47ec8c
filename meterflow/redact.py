"""Keeps secrets out of everything meterflow prints.

Values that come from the credential store (``${creds:...}``), secret config fields
and secret-looking environment variables are registered here; :func:`redact` replaces
them in any text, and :class:`RedactingFilter` applies it to every log record.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|cookie|credential", re.I)

# All secrets are matched by one regex shaped like a trie (shared prefixes factored out), so
# a text is scanned once whatever the number of secrets: an aggregator with a thousand meter
# instances registers thousands (passwords, and a token per meter renewed every hour).
# Compiling that regex takes tens of milliseconds, so secrets added since the last compile
# wait in a list checked with ``in`` and are folded in when the list outgrows an eighth of
# the pattern: compiles stay rare however the secrets arrive.
RECENT_MIN = 32
_secrets: dict[str, int] = {}       # value -> how many registered it
_pattern: re.Pattern | None = None  # the secrets registered before the last compile
_joined = ""                        # the same, NUL-separated: one C-level search for containment
_in_pattern = 0
_stale = 0                          # forgotten but still in the pattern (masking them is harmless)
_recent: list[str] = []             # registered since the compile, longest first
_rebuild = False


def add(value: Any) -> None:
    """Register a secret value; short values (under 4 chars) would mask too much and are skipped."""
    global _rebuild
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or len(value) < 4:
        return
    if value in _secrets:
        _secrets[value] += 1
        return
    # One secret inside another must go in the one pattern, where the longer one wins.
    if len(_recent) >= max(RECENT_MIN, _in_pattern // 8) or _overlaps(value):
        _rebuild = True
    _secrets[value] = 1
    _recent.append(value)
    _recent.sort(key=len, reverse=True)


def _overlaps(value: str) -> bool:
    if _pattern is not None and (value in _joined or _pattern.search(value)):
        return True
    return any(value in s or s in value for s in _recent)


def forget(value: str) -> None:
    """Undo one :func:`add` of ``value`` (a deleted credential, a replaced token)."""
    global _rebuild, _stale
    count = _secrets.get(value)
    if count is None:
        return
    if count > 1:
        _secrets[value] = count - 1
        return
    del _secrets[value]
    if value in _recent:
        _recent.remove(value)
    else:
        _stale += 1
        _rebuild = _rebuild or _stale > max(RECENT_MIN, _in_pattern // 2)


def _trie_regex(words) -> str:
    root: dict = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        run = []  # a chain of single children is one literal: no nesting per character
        while len(node) == 1 and "" not in node:
            (ch, node), = node.items()
            run.append(ch)
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        body = "" if not branches else branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        if body and "" in node:
            body = f"(?:{body})?"  # greedy: the longer secret wins
        return re.escape("".join(run)) + body

    return emit(root)


def _current() -> bool:
    """Fold the recent secrets into the pattern when due; True when there is anything to mask."""
    global _pattern, _joined, _in_pattern, _stale, _rebuild
    if _rebuild:
        _pattern = re.compile(_trie_regex(_secrets)) if _secrets else None
        _joined = "\0".join(_secrets)
        _in_pattern, _stale = len(_secrets), 0
        _recent.clear()
        _rebuild = False
    return bool(_secrets)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(text: Any) -> str:
    text = text if isinstance(text, str) else str(text)
    if not _current():
        return text
    for secret in _recent:
        if secret in text:
            text = text.replace(secret, MASK)
    if _pattern is not None:
        text = _pattern.sub(MASK, text)
    return text


def redact_value(value: Any) -> Any:
    """A copy of a JSON-like value with secrets masked (for debug output and traces)."""
    if not _current():
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _current():
            record.msg = redact(record.getMessage())
            record.args = ()
        return True
