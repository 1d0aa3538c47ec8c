"""Test helper for flow authors and plugin authors.

    from meterflow.testing import Harness

    async def test_reading_is_published():
        async with Harness(text=FLOW) as h:          # or Harness("flows/smt.yaml")
            h.inject("parse", {"payload": '{"a": 1}'})
            await h.advance(180)                      # virtual time: instant
            assert h.messages("out")[-1]["payload"] == {"a": 1}

Everything runs on a :class:`~meterflow.clock.VirtualClock`: delays, retries, cron
and intervals fire as ``advance`` passes their due time, in order.  ``messages(id)``
lists snapshots of what reached a node; ``debug`` what debug nodes showed; ``errors``
the errors no catch node took.
"""

from __future__ import annotations

import os
from typing import Any

from .clock import VirtualClock
from .errors import ConfigError
from .flowfile import FlowSpec, load_flow
from .message import clone
from .plugins import Registry, hookimpl, make_manager
from .runtime import Engine, Flow


class FlowLoadError(ConfigError):
    def __init__(self, spec: FlowSpec):
        self.problems = spec.errors
        super().__init__("\n".join(map(str, spec.errors)))


class Harness:
    def __init__(self, path: str | os.PathLike | None = None, *, text: str | None = None,
                 file: str = "test-flow.yaml", env: dict | None = None, start_time: float | None = None,
                 registry=None):
        self.file = str(path) if path is not None else file
        self.text = text
        self.env = env
        self.registry = registry
        self.clock = VirtualClock() if start_time is None else VirtualClock(start_time)
        self.engine = Engine(clock=self.clock)
        self.flow: Flow | None = None
        self.received: dict[str, list[dict]] = {}
        self.debug: list[tuple[str, Any]] = []
        self.errors: list[tuple[str, str, str]] = []

    # ---- lifecycle ----------------------------------------------------------------------
    def load(self) -> Flow:
        env = dict(os.environ) if self.env is None else {**os.environ, **self.env}
        spec = load_flow(self.file, self.registry, text=self.text, env=env)
        if spec.errors:
            raise FlowLoadError(spec)
        self.flow = self.engine.load(spec)
        for node in self.flow.nodes.values():
            self._record(node)
        self.engine.debug_listeners.append(lambda node, value, msg: self.debug.append((node.id, value)))
        self.engine.error_listeners.append(lambda node, text, kind: self.errors.append((node.id, text, kind)))
        return self.flow

    async def start(self) -> Harness:
        if self.flow is None:
            self.load()
        await self.engine.start()
        await self.engine.settle()
        return self

    async def stop(self) -> bool:
        return await self.engine.stop()

    async def __aenter__(self) -> Harness:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        if self.engine.started:
            await self.stop()

    def _record(self, node) -> None:
        inner = node.on_input
        box = self.received.setdefault(node.id, [])

        def recording(msg):
            box.append(clone(msg))
            return inner(msg)

        node.on_input = recording

    # ---- driving --------------------------------------------------------------------------
    def node(self, node_id: str):
        return self.engine.find(node_id)

    def inject(self, node_id: str, msg: dict | None = None) -> dict:
        """Queue ``msg`` for ``node_id`` as if a wire delivered it (call ``settle``/``advance`` after)."""
        msg = {"payload": None} if msg is None else msg
        msg.setdefault("_msgid", f"{id(msg):016x}")
        self.engine.queue.append((self.node(node_id), msg))
        if not self.engine._scheduled:
            self.engine._schedule()
        return msg

    async def send(self, node_id: str, msg: dict | None = None) -> dict:
        """``inject`` then ``settle``."""
        msg = self.inject(node_id, msg)
        await self.settle()
        return msg

    async def trigger(self, node_id: str) -> None:
        """Fire an inject node as its button (or ``meterflow inject``) does."""
        self.node(node_id).fire()
        await self.settle()

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    async def settle(self) -> None:
        await self.engine.settle()

    # ---- looking ----------------------------------------------------------------------------
    def messages(self, node_id: str) -> list[dict]:
        if node_id not in self.received:
            raise KeyError(f"no node {node_id!r} in this flow")
        return self.received[node_id]

    def watch(self, node_id: str) -> list[tuple[float, object]]:
        """A list that fills with ``(virtual seconds since the start, payload)`` for every
        message reaching ``node_id`` from now on: for asserting on timing."""
        seen: list = []
        node = self.node(node_id)
        inner = node.on_input
        start = self.clock.start

        def timed(msg):
            seen.append((round(self.clock.time() - start, 6), msg.get("payload")))
            return inner(msg)

        node.on_input = timed
        return seen

    def payloads(self, node_id: str) -> list:
        return [m.get("payload") for m in self.messages(node_id)]

    @property
    def flow_context(self):
        return self.flow.context

    @property
    def global_context(self):
        return self.engine.contexts.global_

    def context(self, node_id: str):
        return self.node(node_id).context


def registry_with(*node_types) -> Registry:
    """The installed node types plus ``node_types`` (for testing a node class before packaging it)."""

    class _Extra:
        @hookimpl
        def meterflow_node_types(self):
            return list(node_types)

    pm = make_manager()
    pm.register(_Extra(), name="test")
    return Registry(pm)


def flow_text(nodes_yaml: str, header: str = "meterflow: 1\n") -> str:
    """Convenience for tests: prefix a ``nodes:`` block with the version header."""
    return header + nodes_yaml


__all__ = ["Harness", "FlowLoadError", "flow_text", "registry_with"]
