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
_secrets: set[str] = set()
_pattern: re.Pattern | None = None
_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|cookie|credential", re.I)


def add(value: Any) -> None:
    """Register a secret value; short values (under 4 chars) would mask too much and are skipped."""
    global _pattern
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) >= 4 and value not in _secrets:
        _secrets.add(value)
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(text: Any) -> str:
    text = text if isinstance(text, str) else str(text)
    return _pattern.sub(MASK, text) if _pattern is not None else text


def redact_value(value: Any) -> Any:
    """A copy of a JSON-like value with secrets masked (for debug output and traces)."""
    if _pattern is None:
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
        if _pattern is not None:
            record.msg = redact(record.getMessage())
            record.args = ()
        return True
