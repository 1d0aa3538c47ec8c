"""Node, flow and global context, in memory or backed by JSON files.

As in Node-RED, context holds references (no copies) and keys are property paths
(``flow.set("smt.correlationId", ...)``).  The file store keeps everything in memory,
marks a scope dirty on change and writes it atomically (temp file + rename) soon after
(``flush``, default 1 s, coalesced, off the event loop) and at shutdown, so a restart picks
up where the last run stopped: a pending SMT read resumes polling instead of asking for a
new one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import redact
from .message import MISSING, get, set_path

log = logging.getLogger("meterflow.context")


class Context:
    """One scope's key/value data.  ``set(key, None)`` deletes, like Node-RED's undefined."""

    __slots__ = ("data", "_changed")

    def __init__(self, data: dict | None = None, changed=None):
        self.data = data if data is not None else {}
        self._changed = changed

    def get(self, key: str, default: Any = None) -> Any:
        return get(self.data, key, default)

    def set(self, key: str, value: Any) -> None:
        if redact.is_secret_name(key if isinstance(key, str) else str(key[-1])):
            # e.g. flow.set("token", ...): masked in every log and trace while it is held; the
            # token it replaces is let go, or an hourly renewal would grow the set for years.
            old = get(self.data, key, None)
            if old != value:
                if isinstance(value, str):
                    redact.add(value)
                if isinstance(old, str):
                    redact.forget(old)
        set_path(self.data, key, MISSING if value is None else value)
        if self._changed is not None:
            self._changed()

    def delete(self, key: str) -> None:
        self.set(key, None)

    def keys(self) -> list[str]:
        return list(self.data)

    def mark_changed(self) -> None:
        """For callers that mutated a value obtained with ``get`` in place."""
        if self._changed is not None:
            self._changed()


class MemoryStore:
    def __init__(self):
        self._scopes: dict[str, Context] = {}

    def scope(self, name: str) -> Context:
        ctx = self._scopes.get(name)
        if ctx is None:
            ctx = self._scopes[name] = Context(self._load(name), self._dirty_cb(name))
        return ctx

    def _load(self, name: str) -> dict:
        return {}

    def _dirty_cb(self, name: str):
        return None

    def flush(self) -> None:
        pass


class FileStore(MemoryStore):
    """Scopes are files ``<dir>/<scope>.json`` (scope names may contain ``/``).

    The timed flush serializes on the event loop (a consistent snapshot) and leaves the
    file work (temp file, fsync, rename) to one writer thread, so a thousand meter
    instances saving their state do not stall every other message.  The flush at
    shutdown waits for the writes under way, then writes in the caller's thread.
    """

    def __init__(self, directory: str | os.PathLike, schedule=None, flush_delay: float = 1.0):
        super().__init__()
        self.dir = Path(directory)
        self._schedule = schedule  # callable(delay, fn) -> timer, from the engine clock
        self._delay = flush_delay
        self._dirty: set[str] = set()
        self._timer = None
        self._writing: list[Future] = []

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _load(self, name: str) -> dict:
        path = self._path(name)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Keep the unreadable file for the user to inspect; never overwrite it silently.
            keep = path.with_suffix(".json.corrupt")
            os.replace(path, keep)
            log.error("context file %s is unreadable (%s); moved aside to %s, starting empty", path, e, keep)
            return {}
        if not isinstance(data, dict):
            return {}
        _register_secrets(data)
        return data

    def _dirty_cb(self, name: str):
        def changed():
            self._dirty.add(name)
            if self._timer is None and self._schedule is not None:
                self._timer = self._schedule(self._delay, self._timed_flush)

        return changed

    def _snapshots(self) -> list[tuple[Path, str]]:
        # One line, no indent: json's C encoder only runs without indentation (5-10x faster).
        jobs = [(self._path(name), json.dumps(self._scopes[name].data, default=_jsonable, sort_keys=True) + "\n")
                for name in sorted(self._dirty)]
        self._dirty.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return jobs

    def _timed_flush(self) -> None:
        self._timer = None
        self._writing = [f for f in self._writing if not f.done()]
        self._writing.append(_writer().submit(self._write_all, self._snapshots(), False))

    def flush(self) -> None:
        for f in self._writing:
            f.result()
        self._writing.clear()
        self._write_all(self._snapshots(), raise_errors=True)

    def _write_all(self, jobs: list[tuple[Path, str]], raise_errors: bool) -> None:
        for path, text in jobs:
            try:
                self._write(path, text)
            except OSError as e:
                if raise_errors:
                    raise
                log.error("could not write context %s: %s", path, e)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _register_secrets(data: dict) -> None:
    """Values under secret-like names in a loaded file are masked, as when they were set."""
    for key, value in data.items():
        if isinstance(value, dict):
            _register_secrets(value)
        elif isinstance(value, str) and redact.is_secret_name(str(key)):
            redact.add(value)


_executor: ThreadPoolExecutor | None = None


def _writer() -> ThreadPoolExecutor:
    """One thread writes every context file, in the order the snapshots were taken."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meterflow-context")
    return _executor


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"type": "Buffer", "data": list(value)}
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


class Contexts:
    """The engine's context scopes: one global, one per flow, one per node."""

    def __init__(self):
        self.global_store: MemoryStore = MemoryStore()
        self.global_ = self.global_store.scope("global")
        self._stores: list[MemoryStore] = [self.global_store]

    def use_file_global(self, store: FileStore) -> None:
        """The first file-backed flow also persists global context."""
        if type(self.global_store) is MemoryStore and not self.global_.data:
            self.global_store = store
            self.global_ = store.scope("global")

    def add_store(self, store: MemoryStore) -> MemoryStore:
        self._stores.append(store)
        return store

    def node(self, flow, node_id: str) -> Context:
        return flow.store.scope(f"node/{node_id}")

    def flush(self) -> None:
        for store in self._stores:
            try:
                store.flush()
            except OSError as e:
                log.error("could not write context: %s", e)
