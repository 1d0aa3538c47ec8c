"""file-in / file-out: read a file into a message, write, append or delete one.

::

    - id: read-cert
      type: file-in
      filename: certs/fullchain.pem   # omitted: msg.filename; relative to the flow file's folder
      format: utf8                    # utf8 (one string), bytes, or lines (one message per line)
      wires: [next]

    - id: save
      type: file-out
      filename: state/last-reading.json
      action: write                   # append (default, as Node-RED), write or delete
      add_newline: false              # text gets a "\\n" appended (default true; never for bytes)
      create_dirs: true               # create missing parent folders
      atomic: true                    # write: temp file + rename, so readers never see half a file

``filename_type`` (str default; msg, env, flow, global) says how ``filename`` is read, as
Node-RED's ``filenameType``.  file-in sets ``msg.filename``; in ``lines`` mode it sends
new messages ``{topic, filename, payload, parts: {index, ch, type, id, count on the
last}}`` (``all_props: true``: copies of the input with those set).  A trailing newline
ends the last line rather than starting an empty one.  file-out writes ``msg.payload``:
bytes as they are, text in ``encoding``, mappings and lists as JSON, numbers and
booleans as text; a message without a payload writes nothing.  It sends the message on
after writing or deleting.

Failures (missing file, permission, no filename) are errors of kind ``io`` with
``msg.error.code`` (e.g. ``ENOENT``) and ``msg.error.path``; with ``send_error: true``
file-in also sends a copy of the message without payload and with ``msg.error``.
File access is synchronous on the event loop: fine for the small files flows handle.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, NoReturn

from .. import compare, typed
from ..errors import FlowError
from ..message import MISSING, clone
from ..node import Node
from ..schema import Field
from .json_node import stringify

FILENAME_TYPES = ("str", "msg", "env", "flow", "global")

_COMMON = {
    "filename": Field("str", "the file (relative to the flow file's folder); omitted: msg.filename"),
    "filename_type": Field("str", "how to read 'filename': str, or the msg/env/flow/global value it names",
                           choices=FILENAME_TYPES, default="str"),
    "encoding": Field("str", "text encoding", default="utf-8"),
}


def io_error(action: str, path: Any, e: OSError) -> FlowError:
    code = errno.errorcode.get(e.errno or 0, "EIO")
    return FlowError(f"cannot {action} {path}: {e.strerror or e}", kind="io", code=code, path=str(path))


class _FileNode(Node):
    @classmethod
    def check(cls, config: dict) -> list:
        import codecs

        try:
            codecs.lookup(config.get("encoding") or "utf-8")
        except LookupError:
            return [(("encoding",), f"unknown text encoding {config.get('encoding')!r}")]
        return []

    def _filename(self, msg: dict) -> tuple[str, Path]:
        """(name as given, path to open)."""
        name: Any = self.config.get("filename")
        ftype = self.config["filename_type"]
        if name is None or name == "":
            name = msg.get("filename")
        elif ftype != "str":
            name = typed.evaluate(name, ftype, self, msg)
        if name is None or name is MISSING or name == "":
            raise FlowError("no filename: set 'filename' or msg.filename", kind="io", code="ENOENT")
        name = compare.js_str(name)
        path = Path(name)
        if not path.is_absolute():
            path = Path(self.flow.spec.file).parent / path
        return name, path


class FileIn(_FileNode):
    type = "file-in"
    summary = "Read a file into msg.payload: one string, bytes, or one message per line"
    schema = {
        **_COMMON,
        "format": Field("str", "utf8: one string; bytes; lines: one message per line", choices=("utf8", "bytes", "lines"),
                        default="utf8"),
        "all_props": Field("bool", "lines: each message is a copy of the input (else only topic/filename)", default=False),
        "send_error": Field("bool", "on failure also send a copy of the msg, without payload, with msg.error",
                            default=False),
    }

    def on_input(self, msg: dict):
        try:
            name, path = self._filename(msg)
        except FlowError as e:
            self._fail(e, msg)
        try:
            data = path.read_bytes()
        except OSError as e:
            self._fail(io_error("read", name, e), msg)
        fmt = self.config["format"]
        msg["filename"] = name
        if fmt == "bytes":
            msg["payload"] = data
            return msg
        text = data.decode(self.config["encoding"], errors="replace")
        if fmt == "utf8":
            msg["payload"] = text
            return msg
        lines = text.split("\n")
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()  # a final newline ends the last line
        last = len(lines) - 1
        for i, line in enumerate(lines):
            m = clone(msg) if self.config["all_props"] else {k: msg[k] for k in ("topic",) if k in msg}
            m["filename"] = name
            m["payload"] = line
            parts = {"index": i, "ch": "\n", "type": "string", "id": msg.get("_msgid")}
            if i == last:
                parts["count"] = len(lines)
            m["parts"] = parts
            m.pop("_msgid", None)
            self.send(m)
        return None

    def _fail(self, err: FlowError, msg: dict) -> NoReturn:
        if self.config["send_error"]:
            copy = clone(msg)
            copy.pop("payload", None)
            copy["error"] = {"message": str(err), "kind": err.kind, **err.details}
            self.send(copy)
        raise err


class FileOut(_FileNode):
    type = "file-out"
    summary = "Write or append msg.payload to a file, or delete the file"
    schema = {
        **_COMMON,
        "action": Field("str", "append (as Node-RED's default), write (replace the file) or delete",
                        choices=("append", "write", "delete"), default="append"),
        "add_newline": Field("bool", "add a newline after text (not after bytes)", default=True),
        "create_dirs": Field("bool", "create missing parent folders", default=False),
        "atomic": Field("bool", "write: write a temporary file and rename it over the target", default=False),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        problems = super().check(config)
        if config.get("atomic") and config.get("action", "append") != "write":
            problems.append((("atomic",), "atomic applies to action: write only"))
        return problems

    def on_input(self, msg: dict):
        name, path = self._filename(msg)
        action = self.config["action"]
        if action == "delete":
            try:
                path.unlink()
            except OSError as e:
                raise io_error("delete", name, e) from None
            return msg
        if msg.get("payload", MISSING) is MISSING:
            return None  # as Node-RED: nothing to write, nothing sent
        data = self._data(msg["payload"])
        try:
            if self.config["create_dirs"]:
                path.parent.mkdir(parents=True, exist_ok=True)
            if action == "append":
                with open(path, "ab") as f:
                    f.write(data)
            elif self.config["atomic"]:
                _atomic_write(path, data)
            else:
                path.write_bytes(data)
        except OSError as e:
            raise io_error("write" if action == "write" else "append to", name, e) from None
        return msg

    def _data(self, payload: Any) -> bytes:
        if isinstance(payload, bytes | bytearray):
            return bytes(payload)
        if isinstance(payload, str):
            text = payload
        elif isinstance(payload, dict | list) or payload is None:
            text = stringify(payload)
        else:
            text = compare.js_str(payload)
        if self.config["add_newline"]:
            text += "\n"
        return text.encode(self.config["encoding"])


def _atomic_write(path: Path, data: bytes) -> None:
    """Write next to the target, flush to disk, then rename over it (keeping its permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


NODE_TYPES = [FileIn, FileOut]
