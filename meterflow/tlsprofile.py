"""TLS profiles: client certificate, key, CA and verification as an ``ssl.SSLContext``
that follows the files on disk, and the pooled aiohttp sessions built on it.

A certificate renewed on disk (Let's Encrypt every 60-90 days) is picked up by the next
request: :meth:`TlsProfile.context` compares each file's inode, size and mtime with the
ones it loaded and rebuilds the context when they differ.  A renewal caught half-way (the
new certificate written, the key not yet) fails to load; the previous context stays in use
and the load is tried again when the files change once more.

Problems with the local files are :class:`~meterflow.errors.ConfigError` naming the file
(and ``details['field']``, the config field): unreadable, not PEM, a key that does not match
the certificate, an encrypted key without or with a wrong passphrase.  The same checks run
at ``meterflow check`` and when the flow starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # ssl loads when a profile is built, not when meterflow starts
    import ssl

log = logging.getLogger("meterflow.tls")

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
_VERSION = {"1.0": "TLSv1", "1.1": "TLSv1_1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}


class TlsFileError(ConfigError):
    """A local certificate, key or CA file that cannot be used; ``field`` is the config field."""

    def __init__(self, field: str, message: str, missing: bool = False):
        super().__init__(message, field=field)
        self.field = field
        self.missing = missing  # the file does not exist (yet): a warning for `check`


@dataclass(frozen=True)
class TlsSettings:
    cert: str | None = None
    key: str | None = None
    key_passphrase: str | None = None
    ca: str | None = None
    verify: bool = True
    server_name: str | None = None
    min_version: str | None = None
    max_version: str | None = None

    @classmethod
    def from_config(cls, config: dict) -> TlsSettings:
        def text(name: str) -> str | None:
            v = config.get(name)
            return None if v in (None, "") else str(v)

        verify = config.get("verify")
        return cls(cert=text("cert"), key=text("key"), key_passphrase=text("key_passphrase"), ca=text("ca"),
                   verify=True if verify is None else bool(verify), server_name=text("server_name"),
                   min_version=text("min_version"), max_version=text("max_version"))

    def files(self) -> list[tuple[str, str]]:
        return [(f, p) for f, p in (("cert", self.cert), ("key", self.key), ("ca", self.ca)) if p]


def _read(path: str, field: str, what: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsFileError(field, f"cannot read {what} file {path}: {e.strerror or e}",
                           missing=isinstance(e, FileNotFoundError)) from None


def _no_passphrase() -> bytes:
    # Never let OpenSSL prompt on the terminal for a passphrase.
    raise TlsFileError("key_passphrase", "the key is encrypted: set key_passphrase")


@dataclass
class Material:
    """What was validated: the certificate chain's leaf facts, for logs and messages."""

    subject: str | None = None
    not_after: Any = None  # datetime (UTC) of the leaf certificate
    fingerprint: str | None = None


def check_files(s: TlsSettings) -> Material:
    """Validate the files with precise messages (OpenSSL alone only says "PEM lib")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    info = Material()
    if s.key and not s.cert:
        raise TlsFileError("cert", "a key without a certificate: set cert as well")
    if s.cert:
        pem = _read(s.cert, "cert", "certificate")
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise TlsFileError("cert", f"{s.cert} is not a PEM certificate file (no readable"
                                       " -----BEGIN CERTIFICATE----- block)") from None
        leaf = chain[0]
        info.subject = leaf.subject.rfc4514_string()
        info.not_after = leaf.not_valid_after_utc
        info.fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        key_field, key_path = ("key", s.key) if s.key else ("cert", s.cert)
        key_pem = _read(s.key, "key", "key") if s.key else pem
        if b"PRIVATE KEY-----" not in key_pem:
            what = f"{key_path} holds no private key" if s.key else f"no key: {s.cert} holds no private key, so set key"
            raise TlsFileError(key_field, what)
        encrypted = b"ENCRYPTED" in key_pem
        password = s.key_passphrase.encode() if (s.key_passphrase and encrypted) else None
        if encrypted and not s.key_passphrase:
            raise TlsFileError("key_passphrase", f"the key in {key_path} is encrypted: set key_passphrase"
                                                 " (e.g. ${creds:NAME.passphrase})")
        try:
            key = serialization.load_pem_private_key(key_pem, password)
        except ValueError:
            if encrypted:
                raise TlsFileError("key_passphrase", f"cannot decrypt the key in {key_path}: wrong key_passphrase") from None
            raise TlsFileError(key_field, f"{key_path} holds no readable PEM private key") from None
        except Exception as e:  # unsupported key types and the like
            raise TlsFileError(key_field, f"cannot load the key in {key_path}: {e}") from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise TlsFileError(key_field, f"the key in {key_path} does not match the certificate in {s.cert}")
    if s.ca:
        try:
            x509.load_pem_x509_certificates(_read(s.ca, "ca", "CA"))
        except ValueError:
            raise TlsFileError("ca", f"{s.ca} is not a PEM CA bundle (no readable -----BEGIN CERTIFICATE----- block)") from None
    return info


def build_context(s: TlsSettings) -> tuple[ssl.SSLContext, Material]:
    """A client ``SSLContext`` for these settings; raises :class:`TlsFileError`."""
    import ssl

    info = check_files(s)
    if not s.ca:
        ctx = ssl.create_default_context()  # ~20 ms and ~1 MB: only when the system store is used
    else:
        # Like Node-RED's tls-config: a CA given replaces the system trust store.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cafile=os.path.expanduser(s.ca))
        except (ssl.SSLError, OSError) as e:
            raise TlsFileError("ca", f"cannot load CA file {s.ca}: {getattr(e, 'reason', None) or e}") from None
    if not s.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for field, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        v = getattr(s, field)
        if v:
            try:
                setattr(ctx, attr, getattr(ssl.TLSVersion, _VERSION[v]))
            except (KeyError, ValueError) as e:
                raise TlsFileError(field, f"{field} {v!r} is not usable here: {e}") from None
    if s.cert:
        try:
            ctx.load_cert_chain(os.path.expanduser(s.cert), os.path.expanduser(s.key) if s.key else None,
                                password=s.key_passphrase or _no_passphrase)
        except TlsFileError:
            raise
        except (ssl.SSLError, OSError) as e:  # changed on disk since check_files, most likely
            where = f"{s.cert}" + (f" / {s.key}" if s.key else "")
            raise TlsFileError("cert", f"cannot load {where}: {getattr(e, 'reason', None) or e}") from None
    return ctx, info


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(os.path.expanduser(path))  # follows certbot's live/ symlinks
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TlsProfile:
    """Settings plus the current context; :meth:`context` reloads when the files change."""

    def __init__(self, settings: TlsSettings, name: str = "tls-profile", clock: Callable[[], float] | None = None):
        self.settings = settings
        self.name = name
        self.generation = 0  # bumped on each (re)load; clients built on an older one are replaced
        self.material: Material | None = None
        self._ctx: ssl.SSLContext | None = None
        self._sig: tuple | None = None
        self._failed_sig: tuple | None = None
        self._clock = clock

    def signature(self) -> tuple:
        return tuple(_stat(p) for _, p in self.settings.files())

    def context(self) -> ssl.SSLContext:
        """The context for the files as they are now (see the module docstring)."""
        sig = self.signature()
        if self._ctx is not None and sig in (self._sig, self._failed_sig):
            return self._ctx
        try:
            ctx, info = build_context(self.settings)
        except TlsFileError as e:
            if self._ctx is None:
                raise
            self._failed_sig = sig
            log.error("[tls-profile %s] the changed files cannot be used, keeping the previous certificate: %s",
                      self.name, e)
            return self._ctx
        first = self._ctx is None
        self._ctx, self._sig, self._failed_sig, self.material = ctx, sig, None, info
        self.generation += 1
        if not first:
            log.info("[tls-profile %s] reloaded %s (%s, valid until %s)", self.name, self.settings.cert,
                     info.subject, info.not_after)
        self._warn_expiry(info)
        return ctx

    def current(self) -> tuple[int, ssl.SSLContext]:
        ctx = self.context()
        return self.generation, ctx

    def _warn_expiry(self, info: Material) -> None:
        if info.not_after is None:
            return
        import datetime as dt

        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC) if self._clock else dt.datetime.now(dt.UTC)
        if info.not_after <= now:
            log.warning("[tls-profile %s] certificate %s (%s) expired on %s", self.name, self.settings.cert,
                        info.subject, info.not_after)
        elif info.not_after - now < dt.timedelta(days=7):
            log.warning("[tls-profile %s] certificate %s (%s) expires on %s", self.name, self.settings.cert,
                        info.subject, info.not_after)


class HttpClients:
    """One ``aiohttp.ClientSession`` (a keep-alive pool) per context generation.

    When the profile reloads, the next request gets a new session; the old one is closed
    as soon as the requests still using it finish.
    """

    def __init__(self, verify: Callable[[], tuple[int, ssl.SSLContext]]):
        # Import aiohttp now, while the flow loads: its ~0.2 s (and the default SSL contexts
        # it builds) would otherwise delay the first request of every meter reading at once.
        import aiohttp  # noqa: F401

        self._verify = verify
        self._client = None
        self._gen: int | None = None
        self._busy: dict[Any, int] = {}
        self._retired: list = []

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        gen, ctx = self._verify()
        if self._client is None or gen != self._gen:
            old, self._client, self._gen = self._client, new_session(ctx), gen
            if old is not None:
                if self._busy.get(old):
                    self._retired.append(old)
                else:
                    await old.close()
        client = self._client
        self._busy[client] = self._busy.get(client, 0) + 1
        try:
            yield client
        finally:
            self._busy[client] -= 1
            if not self._busy[client]:
                del self._busy[client]
                if client in self._retired:
                    self._retired.remove(client)
                    await client.close()

    async def aclose(self) -> None:
        clients = [c for c in [self._client, *self._retired] if c is not None]
        self._client, self._gen, self._retired = None, None, []
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()


#: Receive buffer of each asyncio TLS connection.  asyncio allocates (and zero-fills, so
#: it counts in RSS) 256 KB per connection: 256 MB for 1,000 meters mid-read, where httpx
#: (anyio, which does not use asyncio's TLS transport) held a few KB.  32 KB holds two
#: whole TLS records, so small JSON responses take no more reads than before.
TLS_RECV_BUFFER = 32 * 1024


def _small_tls_buffers() -> None:
    # A class attribute of asyncio's TLS protocol (Python 3.11+): this changes it for every
    # asyncio TLS connection in the process, which in meterflow are its HTTP requests'.
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_RECV_BUFFER:
        sslproto.SSLProtocol.max_size = TLS_RECV_BUFFER


def inactivity_timeout(seconds: float):
    """meterflow's request timeout: connecting (TCP and TLS handshake) and each wait for
    data from the server, each within ``seconds``; no limit on the request as a whole."""
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=seconds, sock_read=seconds)


def new_session(ctx: ssl.SSLContext | bool):
    """An ``aiohttp.ClientSession`` that behaves like a plain HTTP client, not like a
    browser; ``ctx`` True: the system trust store.  Close it with ``await s.close()``."""
    import aiohttp

    _small_tls_buffers()

    session = aiohttp.ClientSession(
        # No enable_cleanup_closed: it arms a 2 s timer per session for good, and an idle
        # process must not wake up (30 times a minute per meter).  A connection dropped
        # after an error is closed with a TLS close_notify; a server that never answers it
        # keeps that socket until asyncio gives up on the shutdown, after 30 s.
        connector=aiohttp.TCPConnector(ssl=ctx, enable_cleanup_closed=False),
        # Cookies are not carried from one request to the next (as in Node-RED's http
        # request): unrelated nodes' requests share a pool; a flow that needs a cookie
        # copies it from msg.headers into request_headers.
        cookie_jar=aiohttp.DummyCookieJar(),
        # No "Content-Type: application/octet-stream" on a body the flow sent without one.
        skip_auto_headers=("Content-Type",),
        timeout=aiohttp.ClientTimeout(total=None),  # each request sets its own
        raise_for_status=False,
    )
    # aiohttp silently sends an idempotent request (GET, PUT, DELETE, ...) a second time when
    # its connection fails; the caller's own retry (tls-request's `retry`, an outbox) decides
    # what is sent again, and a rejected client certificate would cost a second handshake.
    if "_retry_connection" in getattr(type(session), "ATTRS", ()):
        session._retry_connection = False
    return session


# ---- sharing -----------------------------------------------------------------------------------
# Profiles with the same settings share one context per process: a thousand meter instances
# of one flow load the CA file once.
_shared: dict[TlsSettings, list] = {}  # settings -> [TlsProfile, users]


def acquire(settings: TlsSettings, name: str) -> tuple[TlsProfile, HttpClients]:
    """The shared profile for ``settings`` (``TlsSettings()``: system trust, no client
    certificate) and a connection pool of the caller's own; pair with :func:`release`.
    (A pool shared by many instances was measured slower: docs/performance.md.)"""
    entry = _shared.get(settings)
    if entry is None:
        entry = _shared[settings] = [TlsProfile(settings, name=name), 0]
    entry[1] += 1
    return entry[0], HttpClients(entry[0].current)


async def release(settings: TlsSettings, clients: HttpClients) -> None:
    await clients.aclose()
    entry = _shared.get(settings)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            del _shared[settings]
