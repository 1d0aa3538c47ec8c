"""Turn httpx / ssl exceptions into flow errors with a ``kind``.

* ``tls``: an ``ssl.SSLError`` anywhere in the exception chain: a handshake failure, an
  alert from the server (its certificate check of ours), our check of its certificate.
  Under TLS 1.3 the server checks the client certificate after the handshake has finished
  on the client's side, so a rejected certificate arrives as ``httpx.ReadError`` whose
  ``__cause__`` (httpcore) has the ``ssl.SSLError`` as ``__context__``: both links are walked.
  A connection closed without an alert (``SSLEOFError``) is not a TLS verdict: ``connect``;
  nor is ``SSLWantReadError``, which async TLS stacks raise and catch as flow control, so
  it appears in the chain of an unrelated reset.
* ``timeout``: no connection, or no response, within the timeout.
* ``connect``: refused, unreachable, reset, closed before the response.
* ``config``: a URL httpx cannot use.

The message names the server (scheme, host, port and path; never the query string or
user info, which may hold secrets); ``details`` carry ``url`` and, for tls, ``reason``
(OpenSSL's name, e.g. ``SSLV3_ALERT_BAD_CERTIFICATE``).
"""

from __future__ import annotations

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
    found = [e for e in chain(exc) if isinstance(e, ssl.SSLError) and not isinstance(e, not_a_verdict)]
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
    """A :class:`FlowError` with the right kind for an exception raised by an httpx request."""
    import httpx

    if isinstance(exc, FlowError):
        return exc
    where = safe_url(url)
    sslerr = find_ssl_error(exc)
    if sslerr is not None:
        reason = _reason(sslerr)
        err: FlowError = TlsError(f"TLS with {where} failed: {_explain(sslerr)} ({reason})", url=where, reason=reason)
    elif isinstance(exc, httpx.TimeoutException):
        after = f" within {timeout:g}s" if timeout else ""
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            err = TimeoutError(f"cannot connect to {where}{after} (timeout)", url=where)
        else:
            err = TimeoutError(f"no response from {where}{after} (timeout)", url=where)
    elif isinstance(exc, httpx.ConnectError):
        err = ConnectError(f"cannot connect to {where}: {_oserror_text(exc)}", url=where)
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        err = ConfigError(f"cannot request {where}: {exc}", url=where)
    elif isinstance(exc, httpx.TooManyRedirects):
        err = FlowError(f"too many redirects from {where}", kind="http", url=where)
    elif isinstance(exc, httpx.DecodingError):
        err = ParseError(f"cannot decode the response from {where}: {exc}", url=where)
    elif isinstance(exc, httpx.TransportError):
        # ReadError, WriteError, RemoteProtocolError ("Server disconnected..."), CloseError
        err = ConnectError(f"connection to {where} failed: {_oserror_text(exc)}", url=where)
    elif isinstance(exc, OSError):
        err = ConnectError(f"connection to {where} failed: {_oserror_text(exc)}", url=where)
    else:
        return exc if isinstance(exc, FlowError) else FlowError(f"request to {where} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def status_error(status: int, reason: str, url: object) -> HttpError:
    return HttpError(f"HTTP {status} {reason} from {safe_url(url)}".rstrip(), status, url=safe_url(url))
