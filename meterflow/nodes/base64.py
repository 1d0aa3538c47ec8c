"""base64: encode to or decode from base64 (node-red-node-base64).

::

    - id: b64
      type: base64
      action: decode          # auto (default), encode or decode
      property: payload

* ``encode``: bytes, or text as UTF-8 (a mapping or list as its JSON, a number as its
  text), become a base64 string.
* ``decode``: a base64 string (whitespace ignored) becomes a UTF-8 **string**; anything
  else is an error of kind ``parse``.
* ``auto`` (Node-RED's behaviour, quirk included): bytes are encoded; a string made only
  of base64 characters whose length is a multiple of 4 is **decoded to bytes** — so
  ``"test"`` or ``"abcd"`` are decoded too; any other string is encoded.  Other types are
  dropped with a warning.

A message without the property is dropped with a warning, as in Node-RED.
"""

from __future__ import annotations

import base64 as _b64
import binascii
import json
import re
from typing import Any

from .. import compare
from ..errors import ParseError
from ..message import MISSING, ParentMissing, lookup, set_path
from ..node import Node
from ..schema import Field

_B64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")
_SPACE = re.compile(r"\s+")


def looks_like_base64(text: str) -> str | None:
    """The text without whitespace when Node-RED would take it for base64, else None."""
    s = _SPACE.sub("", text)
    return s if _B64_CHARS.fullmatch(s) and len(s) % 4 == 0 else None


def b64decode(s: str) -> bytes:
    """As Node's ``Buffer.from(s, "base64")``: decoding stops at the first '='."""
    s = s.split("=", 1)[0]
    s = s[: len(s) - 1] if len(s) % 4 == 1 else s  # a lone trailing character carries no byte
    try:
        return _b64.b64decode(s + "=" * (-len(s) % 4))
    except binascii.Error as e:  # pragma: no cover - the character check comes first
        raise ParseError(f"invalid base64: {e}") from None


def to_bytes(value: Any) -> bytes:
    """Node-RED's ``ensureBuffer``: objects as JSON text, other values as their text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict | list) or value is None:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return compare.js_str(value).encode()


class Base64(Node):
    type = "base64"
    summary = "Encode a property to base64 or decode it (auto: decode what looks like base64)"
    schema = {
        "action": Field("str", "auto: bytes are encoded, base64-looking text decoded to bytes, other text encoded;"
                        " encode; decode (to a UTF-8 string)", choices=("auto", "encode", "decode"), default="auto"),
        "property": Field("path", "the message property to convert", default="payload"),
    }

    def setup(self) -> None:
        self._action = self.config["action"]
        self._prop = self.config["property"]

    def on_input(self, msg: dict):
        try:
            value = lookup(msg, self._prop)
        except ParentMissing:
            value = MISSING
        if value is MISSING:
            self.warn(f"No property: {self._prop}")
            return None
        action = self._action
        if action == "encode":
            out: Any = _b64.b64encode(to_bytes(value)).decode("ascii")
        elif action == "decode":
            if isinstance(value, bytes | bytearray):
                value = bytes(value).decode("latin-1")
            if not isinstance(value, str):
                raise ParseError(f"cannot decode base64 from a {compare.js_type(value)}: expected a string")
            s = looks_like_base64(value)
            if s is None:
                raise ParseError("Invalid Base64 string")
            out = b64decode(s).decode("utf-8", errors="replace")
        elif isinstance(value, bytes | bytearray):
            out = _b64.b64encode(value).decode("ascii")
        elif isinstance(value, str):
            s = looks_like_base64(value)
            out = b64decode(s) if s is not None else _b64.b64encode(value.encode()).decode("ascii")
        else:
            self.warn("This node only handles strings or buffers.")
            return None
        set_path(msg, self._prop, out)
        return msg


NODE_TYPES = [Base64]
