"""Turn aiohttp / ssl exceptions into flow errors with a ``kind``.

* ``tls``: an ``ssl.SSLError`` anywhere in the exception chain: a handshake failure, an
  alert from the server (its certificate check of ours), our check of its certificate.
  During the handshake aiohttp raises ``ClientConnectorSSLError`` /
  ``ClientConnectorCertificateError`` with the ``ssl.SSLError`` as ``__cause__``.  Under
  TLS 1.3 the server checks the client certificate after the handshake has finished on
  the client's side, so a rejected certificate arrives while the response is awaited, as
  a ``ClientOSError`` whose ``__cause__`` is the ``ssl.SSLError``: the whole chain
  (``__cause__`` and ``__context__``) is walked.  A connection closed without an alert
  (``SSLEOFError``) is not a TLS verdict: ``connect``; nor is ``SSLWantReadError``, which
  async TLS stacks raise and catch as flow control, so it may appear in the chain of an
  unrelated reset.
* ``timeout``: no connection (``ConnectionTimeoutError``), or no response
  (``SocketTimeoutError``), within the timeout.
* ``connect``: refused, unreachable, unknown host (``ClientConnectorError``); reset, closed
  before the whole response, not HTTP (``ServerDisconnectedError``, ``ClientOSError``,
  ``ClientPayloadError``, ``ClientResponseError``).
* ``parse``: a body that cannot be decompressed.
* ``http``: too many redirects.
* ``config``: a URL aiohttp cannot use (``InvalidURL``, also as a redirect target).

The message names the server (scheme, host, port and path; never the query string or
user info, which may hold secrets); ``details`` carry ``url`` and, for tls, ``reason``
(OpenSSL's name, e.g. ``SSLV3_ALERT_BAD_CERTIFICATE``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import redact
from .errors import ConfigError, ConnectError, FlowError, HttpError, ParseError, TimeoutError, TlsError

if TYPE_CHECKING:  # ssl is imported when a request fails, not when meterflow starts
    import ssl

#: OpenSSL reasons (without the SSLV3_/TLSV1_/TLSV13_ prefix) for "the server did not accept our certificate".
_REJECTED = {"ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN", "ALERT_UNKNOWN_CA",
             "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED", "ALERT_UNSUPPORTED_CERTIFICATE",
             "ALERT_ACCESS_DENIED", "ALERT_DECRYPT_ERROR"}


def safe_url(url: object) -> str:
    """``scheme://host:port/path`` without user info, query or fragment; known secrets masked."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return redact.redact(f"{parts.scheme}://{host}{port}{parts.path}")


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception linked from it by ``__cause__`` or ``__context__``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend((e.__cause__, e.__context__))


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS verdict in the chain: a certificate check, else an SSLError with an OpenSSL reason."""
    import ssl

    # Not verdicts: flow control inside the TLS layer (anyio raises and catches SSLWantReadError,
    # so it shows up as the __context__ of a later failure) and connections that simply ended.
    not_a_verdict = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                     ssl.SSLSyscallError)
    # Nor aiohttp's wrappers (ClientConnectorSSLError and ...CertificateError are ssl errors
    # themselves): they lack OpenSSL's reason, and one wrapping an SSLEOFError is no verdict.
    found = [e for e in chain(exc) if isinstance(e, ssl.SSLError) and not isinstance(e, not_a_verdict)
             and not isinstance(e.__cause__, ssl.SSLError)]
    for e in found:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
    for e in found:
        if getattr(e, "reason", None):
            return e
    return found[0] if found else None


def _reason(e: ssl.SSLError) -> str:
    return getattr(e, "reason", None) or type(e).__name__


def _explain(e: ssl.SSLError) -> str:
    import ssl

    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted: {e.verify_message or e.reason}"
    reason = _reason(e)
    short = reason.split("_", 1)[1] if reason.startswith(("SSLV3_", "TLSV1_", "TLSV13_")) else reason
    if short == "ALERT_CERTIFICATE_REQUIRED":
        return "the server requires a client certificate"
    if short in _REJECTED:
        return "the server rejected the client certificate"
    if short == "ALERT_HANDSHAKE_FAILURE":
        return "handshake failure (no acceptable client certificate, cipher or version)"
    if short in ("ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "WRONG_VERSION_NUMBER"):
        return "no TLS version both sides accept (or the server does not speak TLS)"
    return "TLS error"


def _oserror_text(exc: BaseException) -> str:
    import ssl

    for e in chain(exc):
        if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and e.strerror:
            return e.strerror
    text = str(exc)
    return text or type(exc).__name__


def classify(exc: BaseException, url: object, timeout: float | None = None) -> FlowError:
    """A :class:`FlowError` with the right kind for an exception raised by an aiohttp request."""
    import aiohttp

    if isinstance(exc, FlowError):
        return exc
    where = safe_url(url)
    sslerr = find_ssl_error(exc)
    if sslerr is not None:
        reason = _reason(sslerr)
        err: FlowError = TlsError(f"TLS with {where} failed: {_explain(sslerr)} ({reason})", url=where, reason=reason)
    elif isinstance(exc, asyncio.TimeoutError):  # the builtin (aiohttp's timeouts are ones); not errors.TimeoutError
        after = f" within {timeout:g}s" if timeout else ""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            err = TimeoutError(f"cannot connect to {where}{after} (timeout)", url=where)
        else:
            err = TimeoutError(f"no response from {where}{after} (timeout)", url=where)
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):  # also as a redirect target
        err = ConfigError(f"cannot request {where}: {_url_problem(exc)}", url=where)
    elif isinstance(exc, aiohttp.TooManyRedirects):
        err = FlowError(f"too many redirects from {where}", kind="http", url=where)
    elif isinstance(exc, aiohttp.ClientPayloadError) and _undecodable(exc):
        err = ParseError(f"cannot decode the response from {where}: {exc}", url=where)
    elif isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, no such host
        err = ConnectError(f"cannot connect to {where}: {_oserror_text(exc)}", url=where)
    elif isinstance(exc, aiohttp.ClientError | OSError):
        # ServerDisconnectedError, ClientOSError (reset), a body cut short (ClientPayloadError),
        # a response that is not HTTP (ClientResponseError)
        err = ConnectError(f"connection to {where} failed: {_oserror_text(exc)}", url=where)
    else:
        return FlowError(f"request to {where} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _url_problem(exc: BaseException) -> str:
    # Not str(exc): aiohttp's is the whole URL, query and user info included.
    import aiohttp

    redirect = " (redirect target)" if isinstance(exc, aiohttp.RedirectClientError) else ""
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return "not an http:// or https:// URL" + redirect
    return (redact.redact(str(exc.__cause__)) if exc.__cause__ else "invalid URL") + redirect


def _undecodable(exc: BaseException) -> bool:
    """A body that arrived whole but cannot be decompressed (not a connection cut short)."""
    from aiohttp import http_exceptions as h

    # DecompressSizeError (a body that inflates past aiohttp's limit) is recent.
    undecodable = (h.ContentEncodingError, getattr(h, "DecompressSizeError", h.ContentEncodingError))
    return any(isinstance(e, undecodable) for e in chain(exc))


def status_error(status: int, reason: str, url: object) -> HttpError:
    return HttpError(f"HTTP {status} {reason} from {safe_url(url)}".rstrip(), status, url=safe_url(url))
