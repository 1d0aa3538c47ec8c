"""The encrypted credential store and the ``${creds:NAME.FIELD}`` substitution.

Flow files never hold secrets; they name them::

    auth: {type: basic, user: "${creds:smt.user}", password: "${creds:smt.password}"}

The store is one JSON file, by default ``~/.config/meterflow/credentials.json``
(``$XDG_CONFIG_HOME`` is honoured; ``METERFLOW_CREDENTIALS`` overrides the path).  Names
and field names are plain; every value is a Fernet token (AES-128-CBC + HMAC-SHA256)::

    {"meterflow_credentials": 1,
     "check": "<token of a fixed text: tells a wrong key from a damaged value>",
     "secrets": {"smt": {"user": "<token>", "password": "<token>"}}}

The key comes from ``METERFLOW_KEY`` (a Fernet key: 44 characters of URL-safe base64) or
from a key file, by default ``credentials.key`` next to the store (``METERFLOW_KEY_FILE``
overrides).  The first ``set`` on an empty store creates that key file with mode 0600.
A missing or wrong key is a clear :class:`~meterflow.errors.CredentialsError`; a new key is
never generated while the store holds secrets (they would become unreadable).

Every value read is registered with :func:`meterflow.redact.add`, so it is masked in
logs, traces, debug output and errors.  Writes are atomic (temporary file + rename),
mode 0600, under an advisory lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from . import redact
from .errors import CredentialsError
from .plugins import hookimpl

log = logging.getLogger("meterflow.credentials")

FORMAT = 1
_CHECK_TEXT = b"meterflow credentials"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
KEY_ENV, STORE_ENV, KEY_FILE_ENV = "METERFLOW_KEY", "METERFLOW_CREDENTIALS", "METERFLOW_KEY_FILE"


def default_store_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(STORE_ENV):
        return Path(env[STORE_ENV]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "meterflow" / "credentials.json"


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise CredentialsError(f"invalid {what} {value!r}: use letters, digits, '_' and '-' (no dots or spaces)")
    return value


def split_ref(ref: str) -> tuple[str, str]:
    """``"smt.password"`` -> ``("smt", "password")``."""
    name, dot, field = ref.partition(".")
    if not dot or not name or not field:
        raise CredentialsError(f"invalid credential reference {ref!r}: write ${{creds:NAME.FIELD}}, e.g. ${{creds:smt.password}}")
    return check_name("credential name", name), check_name("field name", field)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _loose_mode(path: Path) -> int | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & 0o077 else None


class CredentialStore:
    """Named groups of secret fields in one encrypted file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike | None = None, *, key: str | bytes | None = None,
                 key_file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None):
        self.env = os.environ if env is None else env
        self.path = Path(path).expanduser() if path is not None else default_store_path(self.env)
        self._explicit_key = key.encode() if isinstance(key, str) else key
        if key_file is not None:
            self.key_file = Path(key_file).expanduser()
        elif self.env.get(KEY_FILE_ENV):
            self.key_file = Path(self.env[KEY_FILE_ENV]).expanduser()
        else:
            self.key_file = self.path.with_name("credentials.key")
        self._cache: tuple[tuple, dict] | None = None
        self._warned: set[str] = set()
        self._shown: dict[tuple[str, str], str] = {}  # (name, field) -> the value registered as secret

    # ---- the file --------------------------------------------------------------------------
    def _signature(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CredentialsError(f"cannot read credential store {self.path}: {e.strerror}") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> dict:
        """The parsed file (empty when it does not exist), re-read only when it changed."""
        sig = self._signature()
        if sig is None:
            return {"meterflow_credentials": FORMAT, "secrets": {}}
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1]
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise CredentialsError(f"cannot read credential store {self.path}: {e.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise CredentialsError(f"credential store {self.path} is damaged (not JSON: {e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("secrets"), dict):
            raise CredentialsError(f"credential store {self.path} is not a meterflow credential store")
        if data.get("meterflow_credentials") != FORMAT:
            raise CredentialsError(f"credential store {self.path} has format {data.get('meterflow_credentials')!r};"
                                   f" this meterflow reads format {FORMAT}")
        self._warn_mode(self.path, "credential store")
        self._cache = (sig, data)
        return data

    def _save(self, data: dict) -> None:
        write_private(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        self._cache = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An advisory lock around read-modify-write, so two ``creds set`` do not lose one."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _warn_mode(self, path: Path, what: str) -> None:
        mode = _loose_mode(path)
        if mode is not None and str(path) not in self._warned:
            self._warned.add(str(path))
            log.warning("%s %s is readable by others (mode %04o): chmod 600 %s", what, path, mode, path)

    # ---- the key ---------------------------------------------------------------------------
    def _key_source(self) -> tuple[str, bytes | None]:
        """(description for messages, key bytes or None when there is none)."""
        if self._explicit_key:
            return "the given key", self._explicit_key.strip()
        if self.env.get(KEY_ENV):
            return f"the key in {KEY_ENV}", self.env[KEY_ENV].strip().encode()
        try:
            raw = self.key_file.read_bytes()
        except FileNotFoundError:
            return f"key file {self.key_file}", None
        except OSError as e:
            raise CredentialsError(f"cannot read key file {self.key_file}: {e.strerror}") from None
        self._warn_mode(self.key_file, "key file")
        return f"the key in {self.key_file}", raw.strip()

    def _make_fernet(self, source: str, key: bytes):
        from cryptography.fernet import Fernet

        try:
            return Fernet(key)
        except ValueError:
            raise CredentialsError(
                f"{source} is not a valid key: expected 44 characters of URL-safe base64 "
                "(make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            ) from None

    def _has_secrets(self, data: dict) -> bool:
        return bool(data.get("check")) or any(data["secrets"].values())

    def _fernet_for(self, data: dict, create: bool = False):
        """The Fernet for this store, checked against the store's check token."""
        source, key = self._key_source()
        if key is None:
            if self._has_secrets(data):
                raise CredentialsError(
                    f"credential store {self.path} holds secrets but there is no key: set {KEY_ENV} or restore"
                    f" {self.key_file} (a new key cannot decrypt the existing secrets, so none is made)")
            if not create:
                raise CredentialsError(f"no key for credential store {self.path}: set {KEY_ENV} or create"
                                       f" {self.key_file} with `meterflow creds set`")
            key = self._create_key_file()
            source = f"the key in {self.key_file}"
        fernet = self._make_fernet(source, key)
        token = data.get("check")
        if token:
            from cryptography.fernet import InvalidToken

            try:
                ok = fernet.decrypt(token.encode()) == _CHECK_TEXT
            except (InvalidToken, ValueError, TypeError, AttributeError):
                ok = False
            if not ok:
                hint = f"wrong {KEY_ENV}?" if KEY_ENV in source else f"wrong key file, or was {KEY_ENV} set when they were stored?"
                raise CredentialsError(f"{source} does not decrypt credential store {self.path} ({hint})")
        return fernet

    def _create_key_file(self) -> bytes:
        from cryptography.fernet import Fernet

        key = Fernet.generate_key()
        self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # someone made it meanwhile: use theirs, never overwrite
            return self.key_file.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.info("created key file %s (keep it: the secrets cannot be read without it)", self.key_file)
        return key

    # ---- reading ---------------------------------------------------------------------------
    def names(self) -> dict[str, list[str]]:
        """Credential names and their field names (no key needed)."""
        return {n: sorted(f) for n, f in sorted(self._load()["secrets"].items())}

    def fields(self, name: str) -> dict[str, str]:
        """Every field of credential ``name``, decrypted (and registered as secrets)."""
        data = self._load()
        group = data["secrets"].get(name)
        if not group:
            raise CredentialsError(f"no credential {name!r} in {self.path}{self._hint_names(data, name)}"
                                   f" (add it with `meterflow creds set {name} FIELD`)")
        fernet = self._fernet_for(data)
        return {field: self._decrypt(fernet, name, field, token) for field, token in group.items()}

    def get(self, name: str, field: str) -> str:
        data = self._load()
        group = data["secrets"].get(name)
        if not group:
            raise CredentialsError(f"no credential {name!r} in {self.path}{self._hint_names(data, name)}"
                                   f" (add it with `meterflow creds set {name} {field}`)")
        if field not in group:
            from .schema import did_you_mean

            raise CredentialsError(f"credential {name!r} has no field {field!r}{did_you_mean(field, group)}"
                                   f" (fields: {', '.join(sorted(group))})")
        return self._decrypt(self._fernet_for(data), name, field, group[field])

    def _decrypt(self, fernet, name: str, field: str, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            value = fernet.decrypt(token.encode()).decode("utf-8")
        except (InvalidToken, ValueError, AttributeError):
            raise CredentialsError(f"the value of {name}.{field} in {self.path} is damaged (it does not decrypt"
                                   " with the key that decrypts the rest of the store)") from None
        self._register(name, field, value)
        return value

    def _register(self, name: str, field: str, value: str) -> None:
        """Mask ``value`` in every log; the value it replaces in this field is let go, so a
        token rotated every 45 minutes for years does not pile up in the mask.  (A deleted
        value stays masked: it may still be in someone's hands.)"""
        old = self._shown.get((name, field))
        if old == value:
            return
        redact.add(value)
        self._shown[(name, field)] = value
        if old is not None:
            redact.forget(old)

    def _hint_names(self, data: dict, name: str) -> str:
        if not data["secrets"]:
            return ", which is empty" if self.path.exists() else ", which does not exist yet"
        from .schema import did_you_mean

        return did_you_mean(name, data["secrets"])

    # ---- writing ---------------------------------------------------------------------------
    def set(self, name: str, field: str, value: str) -> None:
        self.set_many([(name, field, value)])

    def set_many(self, items: Iterable[tuple[str, str, str]]) -> None:
        """Store ``(name, field, value)`` triples in one write: all of them or none (a login's
        tokens belong together), and one fsync however many fields."""
        items = list(items)
        for name, field, value in items:
            check_name("credential name", name)
            check_name("field name", field)
            if not isinstance(value, str) or value == "":
                raise CredentialsError(f"an empty value is not stored ({name}.{field})")
        if not items:
            return
        with self._locked():
            self._cache = None
            data = self._load()
            fernet = self._fernet_for(data, create=True)
            if not data.get("check"):
                data["check"] = fernet.encrypt(_CHECK_TEXT).decode()
            for name, field, value in items:
                data["secrets"].setdefault(name, {})[field] = fernet.encrypt(value.encode("utf-8")).decode()
            self._save(data)
        for name, field, value in items:
            self._register(name, field, value)

    def delete(self, name: str, field: str | None = None) -> None:
        """Remove one field, or the whole credential when ``field`` is None."""
        with self._locked():
            self._cache = None
            data = self._load()
            group = data["secrets"].get(name)
            if group is None:
                raise CredentialsError(f"no credential {name!r} in {self.path}")
            if field is None:
                del data["secrets"][name]
            else:
                if field not in group:
                    raise CredentialsError(f"credential {name!r} has no field {field!r} (fields: {', '.join(sorted(group))})")
                del group[field]
                if not group:
                    del data["secrets"][name]
            self._save(data)


# ---- ${creds:NAME.FIELD} ------------------------------------------------------------------------
_default_stores: dict[tuple, CredentialStore] = {}


def default_store() -> CredentialStore:
    """The store the environment names, shared in the process: it is parsed once and re-read
    only when the file changes, however many nodes and instances read from it."""
    key = tuple(os.environ.get(v) for v in (STORE_ENV, KEY_FILE_ENV, KEY_ENV, "XDG_CONFIG_HOME"))
    store = _default_stores.get(key)
    if store is None:
        store = _default_stores[key] = CredentialStore()
    return store


def resolve(ref: str, store: CredentialStore | None = None) -> str:
    """The value for ``${creds:NAME.FIELD}``; raises CredentialsError with a message for the user."""
    name, field = split_ref(ref)
    return (store or default_store()).get(name, field)


@hookimpl
def meterflow_substitutions():
    return {"creds": resolve}
