"""One exception hierarchy for everything a flow can go wrong with.

Every error carries a ``kind`` so that a catch node can filter declaratively
("catch tls errors from these nodes") instead of matching message strings.
"""

from __future__ import annotations

KINDS = ("tls", "connect", "timeout", "http", "parse", "config", "auth", "credentials", "io", "runtime")


class FlowError(Exception):
    """Base class. ``kind`` is one of :data:`KINDS` (plugins may add their own)."""

    kind = "runtime"

    def __init__(self, message: str, *, kind: str | None = None, **details):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        # Extra, JSON-friendly facts a catch node exposes as msg.error.<key> (e.g. status).
        self.details = details


class TlsError(FlowError):
    """Handshake failure, certificate rejected or not trusted, protocol alert."""

    kind = "tls"


class ConnectError(FlowError):
    kind = "connect"


class TimeoutError(FlowError):  # noqa: A001 - a flow-level timeout, deliberately named like the kind
    kind = "timeout"


class HttpError(FlowError):
    kind = "http"

    def __init__(self, message: str, status: int, **details):
        super().__init__(message, status=status, **details)
        self.status = status


class ParseError(FlowError):
    kind = "parse"


class ConfigError(FlowError):
    kind = "config"


class AuthError(FlowError):
    kind = "auth"


class CredentialsError(FlowError):
    kind = "credentials"


def kind_of(exc: BaseException) -> str:
    """The kind of any exception; plain Python errors count as ``runtime``."""
    return getattr(exc, "kind", None) or "runtime"
