"""Read Node-RED's ``flows_cred.json``.

Node-RED keeps node credentials out of flows.json, in ``flows_cred.json`` next to it:

* plain (``credentialSecret: false``): ``{"<node id>": {"<field>": value, ...}, ...}``
* encrypted: ``{"$": "<32 hex chars IV><base64 ciphertext>"}``, AES-256-CTR whose key is the
  SHA-256 of the secret *string* (``credentialSecret`` from settings.js, or the generated
  ``_credentialSecret`` in ``.config.runtime.json``, used as text, not decoded from hex).

A wrong secret decrypts to garbage; that is reported as a :class:`CredentialsError` that says
so, never as a JSON traceback.  node-red-contrib-credentials keeps its values as a JSON string
inside the JSON (``{"creds": "[{\\"value\\": ..., \\"type\\": \\"str\\"}]"}``): :func:`contrib_values`
unpacks it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import CredentialsError

SECRET_ENV = "NODE_RED_CREDENTIAL_SECRET"


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def encrypt(creds: dict, secret: str, iv: bytes | None = None) -> dict:
    """``{"$": ...}`` as Node-RED writes it (for tests, and for export with credentials)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = os.urandom(16) if iv is None else iv
    enc = Cipher(algorithms.AES(_key(secret)), modes.CTR(iv)).encryptor()
    data = enc.update(json.dumps(creds, separators=(",", ":")).encode("utf-8")) + enc.finalize()
    return {"$": iv.hex() + base64.b64encode(data).decode("ascii")}


def decrypt(data: Any, secret: str | None, source: str = "flows_cred.json") -> dict[str, dict]:
    """Node id -> credential fields, from the parsed content of a flows_cred.json."""
    if not isinstance(data, dict):
        raise CredentialsError(f"{source} is not a Node-RED credentials file (expected a JSON object)")
    if set(data) != {"$"}:
        return {k: v for k, v in data.items() if isinstance(v, dict)}  # plain form: nothing to decrypt
    if not secret:
        raise CredentialsError(f"{source} is encrypted: give the Node-RED credentialSecret"
                               f" (e.g. in ${SECRET_ENV}; see settings.js or .config.runtime.json)")
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blob = data["$"]
    try:
        iv = bytes.fromhex(blob[:32])
        ciphertext = base64.b64decode(blob[32:], validate=True)
        if len(iv) != 16:
            raise ValueError("short IV")
    except (TypeError, ValueError, binascii.Error):
        raise CredentialsError(f"{source} is damaged: the '$' value is not <hex IV><base64>") from None
    dec = Cipher(algorithms.AES(_key(secret)), modes.CTR(iv)).decryptor()
    plain = dec.update(ciphertext) + dec.finalize()
    try:
        creds = json.loads(plain.decode("utf-8"))
        if not isinstance(creds, dict):
            raise ValueError("not an object")
    except ValueError:
        raise CredentialsError(f"cannot decrypt {source}: wrong credential secret (the result is not JSON);"
                               " use the credentialSecret of the Node-RED that wrote it") from None
    return {k: v for k, v in creds.items() if isinstance(v, dict)}


def find_secret(cred_file: str | os.PathLike, env_var: str | None = None, env=None) -> str | None:
    """The secret from ``env_var`` (default ``NODE_RED_CREDENTIAL_SECRET``), else from the
    ``_credentialSecret`` of a ``.config.runtime.json`` (or older ``.config.json``) beside the file."""
    env = os.environ if env is None else env
    name = env_var or SECRET_ENV
    if env.get(name):
        return env[name]
    if env_var:  # asked for a variable explicitly: do not guess
        return None
    folder = Path(cred_file).parent
    for cfg in (".config.runtime.json", ".config.json"):
        try:
            value = json.loads((folder / cfg).read_text(encoding="utf-8")).get("_credentialSecret")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def load(path: str | os.PathLike, secret: str | None) -> dict[str, dict]:
    """Read and decrypt ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CredentialsError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CredentialsError(f"{path} is not JSON: {e}") from None
    return decrypt(data, secret, str(path))


def contrib_values(node: dict, creds: dict | None) -> list[str | None]:
    """node-red-contrib-credentials: the value for each of ``node["props"]``, in order (None: unset)."""
    props = node.get("props") if isinstance(node.get("props"), list) else []
    raw = (creds or {}).get("creds")
    items: list = []
    if isinstance(raw, str) and raw:
        try:
            items = json.loads(raw)
        except ValueError:
            raise CredentialsError(f"credentials node {node.get('id')}: its 'creds' value is not JSON") from None
    elif isinstance(raw, list):
        items = raw
    out: list[str | None] = []
    for i in range(len(props)):
        item = items[i] if i < len(items) else None
        value = item.get("value") if isinstance(item, dict) else None
        out.append(None if value is None or value == "" else str(value))
    return out
