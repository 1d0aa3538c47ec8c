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
# Secrets grouped by length, one pattern per length, applied longest first: adding a secret
# recompiles only its own group (a thousand meter instances register thousands at start),
# and a secret that contains a shorter one is still masked whole.
_by_length: dict[int, set[str]] = {}
_patterns: dict[int, re.Pattern] = {}
_order: list[int] = []  # lengths, longest first
_stale: set[int] = set()
_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|cookie|credential", re.I)


def add(value: Any) -> None:
    """Register a secret value; short values (under 4 chars) would mask too much and are skipped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) >= 4:
        group = _by_length.setdefault(len(value), set())
        if value not in group:
            group.add(value)
            _stale.add(len(value))


def forget(value: str) -> None:
    """Stop masking ``value`` (a deleted credential)."""
    group = _by_length.get(len(value))
    if group is not None and value in group:
        group.discard(value)
        _stale.add(len(value))


def _current() -> list[tuple[int, re.Pattern]]:
    if _stale:
        for n in _stale:
            if _by_length[n]:
                _patterns[n] = re.compile("|".join(map(re.escape, _by_length[n])))
            else:
                _patterns.pop(n, None)
        _stale.clear()
        _order[:] = sorted(_patterns, reverse=True)
    return [(n, _patterns[n]) for n in _order]


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(text: Any) -> str:
    text = text if isinstance(text, str) else str(text)
    for n, pattern in _current():
        if n <= len(text):
            text = pattern.sub(MASK, text)
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
