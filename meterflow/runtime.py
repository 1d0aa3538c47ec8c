"""The engine: wires nodes, delivers messages, routes errors, runs the lifecycle.

Delivery follows Node-RED: ``send`` only queues; a FIFO queue drained from the event
loop (one ``call_soon`` per batch, not one Task per message) delivers breadth-first in
order.  On fan-out the first receiver gets the original and every later one a deep
copy taken at send time.  Exceptions from a node become errors routed to catch nodes;
nothing a node does can stop the engine.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from . import redact as _redact
from .clock import Clock, RealClock
from .context import Contexts, FileStore, MemoryStore
from .errors import FlowError, kind_of
from .flowfile import FlowSpec
from .message import clone, new_msgid, summary
from .node import Node
from .schema import parse_duration

log = logging.getLogger("meterflow.runtime")
trace_log = logging.getLogger("meterflow.trace")

DEFAULT_DRAIN = 10.0  # seconds in-flight messages get at shutdown
MAX_CATCHES = 10  # Node-RED's loop guard: the 10th catch of one error from one node is refused
_Coroutine = types.CoroutineType


class Flow:
    """One loaded flow file: its nodes, catch/status/complete routing and flow context."""

    def __init__(self, engine: Engine, spec: FlowSpec, instance: str | None = None):
        self.engine = engine
        self.spec = spec
        self.instance = instance
        self.name = f"{spec.name}@{instance}" if instance else spec.name
        self.nodes: dict[str, Node] = {}
        self.catch_nodes: list = []
        self.status_nodes: list = []
        self.complete_nodes: dict[str, list] = {}
        ctx = spec.context or {}
        if ctx.get("store") == "file":
            directory = ctx.get("dir") or str(Path(spec.file).parent / "state" / spec.name)
            if instance:
                directory = str(Path(directory) / instance)  # each instance keeps its own context
            store = FileStore(directory, engine.clock.call_later, parse_duration(ctx.get("flush") or 1.0))
            if not instance:  # instances share global context in memory, never each other's file
                engine.contexts.use_file_global(store)
        else:
            store = MemoryStore()
        self.store = engine.contexts.add_store(store)
        self.context = store.scope("flow")

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]


class Engine:
    def __init__(self, clock: Clock | None = None, trace: bool = False):
        self.clock = clock or RealClock()
        self.trace = trace
        self.flows: list[Flow] = []
        self.contexts = Contexts()
        self.queue: deque = deque()
        self.inflight: set[asyncio.Task] = set()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._delivered = 0  # messages taken from the queue; tells the drain when nothing moves
        self._drain_deadline: float | None = None
        self.started = False
        self.redact = _redact.redact
        self.debug_listeners: list = []  # callables (node, value, msg) fed by debug nodes
        self.error_listeners: list = []  # callables (node, text, kind) for errors no catch took
        if hasattr(self.clock, "settle"):
            self.clock.settle = self.settle

    # ---- building ------------------------------------------------------------------------
    def load(self, spec: FlowSpec, instance: str | None = None) -> Flow:
        if spec.errors:
            raise FlowError("flow has errors:\n" + "\n".join(map(str, spec.errors)), kind="config")
        flow = Flow(self, spec, instance)
        for ns in spec.nodes:
            if ns.disabled:
                continue  # as in Node-RED: not created; messages to it are dropped
            flow.nodes[ns.id] = ns.cls(flow, ns.id, ns.name, ns.config)
        for ns in spec.nodes:
            node = flow.nodes.get(ns.id)
            if node is None or ns.is_config:
                continue
            node._wires = [[flow.nodes[t] for t in out if t in flow.nodes] for out in ns.wires]
            self.rewire(node)
        self.flows.append(flow)
        return flow

    @staticmethod
    def rewire(node: Node) -> None:
        """Recompute the single-target fast path after ``node._wires`` changed."""
        w = node._wires
        node._fast = w[0][0] if len(w) == 1 and len(w[0]) == 1 else None

    def nodes(self) -> Iterable[Node]:
        for flow in self.flows:
            yield from flow.nodes.values()

    def find(self, node_id: str) -> Node:
        for flow in self.flows:
            if node_id in flow.nodes:
                return flow.nodes[node_id]
        raise KeyError(node_id)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ordered = sorted(self.nodes(), key=lambda n: (not n.is_config, n.is_source))
        for node in ordered:
            node.setup()
        for flow in self.flows:
            flow.catch_nodes.sort(key=lambda c: (c.uncaught, c.scope is None))
        for node in ordered:
            try:
                await node.start()
            except Exception as e:
                if node.is_config:
                    raise
                self.report_error(node, e, None)
        self.started = True

    async def stop(self, drain_timeout: float = DEFAULT_DRAIN) -> bool:
        """Stop sources, deliver what is in flight (within ``drain_timeout`` s), close, flush context.

        Returns False when the drain timed out and messages may have been cut short.
        """
        self._stopping = True
        self._drain_deadline = asyncio.get_running_loop().time() + drain_timeout
        nodes = list(self.nodes())
        for node in (n for n in nodes if n.is_source):
            await self._stop_node(node)
        drained = True
        try:
            await asyncio.wait_for(self._drain(nodes), drain_timeout)
        except TimeoutError:
            drained = False
            log.warning("shutdown: %d message(s) still in flight after %.0fs; stopping anyway",
                        len(self.queue) + len(self.inflight), drain_timeout)
        for node in (n for n in nodes if not n.is_source and not n.is_config):
            await self._stop_node(node)
        for node in (n for n in nodes if n.is_config):
            await self._stop_node(node)
        for task in list(self.inflight):
            task.cancel()
        self.contexts.flush()
        self.started = False
        return drained

    def drain_remaining(self) -> float:
        """Seconds left of the shutdown drain budget (the full default before a stop began)."""
        if self._drain_deadline is None:
            return DEFAULT_DRAIN
        return max(0.0, self._drain_deadline - asyncio.get_running_loop().time())

    async def _drain(self, nodes: list[Node]) -> None:
        # Flush held messages, deliver them, and repeat: a flushed message may land in
        # another holding node downstream (delay -> delay).
        for _ in range(len(nodes) + 1):
            await self.settle(ignore_parked=True)
            before = self._delivered
            for node in nodes:
                if not node.is_source and not node.is_config:
                    try:
                        await node.flush()
                    except Exception as e:
                        log.error("[%s %s] error while flushing: %s", node.type, node.id, self.redact(e))
            await self.settle(ignore_parked=True)
            if self._delivered == before:
                return

    async def _stop_node(self, node: Node) -> None:
        try:
            await node.stop()
        except Exception as e:
            log.error("[%s %s] error while stopping: %s", node.type, node.id, self.redact(e))

    async def settle(self, ignore_parked: bool = True) -> None:
        """Wait until no message is queued and no handler runs (timers may still be pending)."""
        parked = getattr(self.clock, "parked", set())
        while True:
            while self.queue or self._scheduled:
                await asyncio.sleep(0)
            busy = [t for t in self.inflight if not (ignore_parked and t in parked)]
            if not busy:
                await asyncio.sleep(0)
                if not self.queue and not self._scheduled and all(
                        t in parked for t in self.inflight if ignore_parked):
                    return
                continue
            # Wake when a handler finishes or parks on the virtual clock, whichever is first.
            waiters = getattr(self.clock, "park_waiters", None)
            parked_now = (self._loop or asyncio.get_running_loop()).create_future()
            if waiters is not None:
                waiters.append(parked_now)
            await asyncio.wait([*busy, parked_now], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            parked_now.cancel()

    # ---- delivery ------------------------------------------------------------------------
    def send(self, node: Node, msg) -> None:
        if msg is None:
            return
        q = self.queue
        if type(msg) is dict:
            fast = node._fast
            if fast is not None:
                if "_msgid" not in msg:
                    msg["_msgid"] = new_msgid()
                q.append((fast, msg))
                if not self._scheduled:
                    self._schedule()
                return
            msg = [msg]
        elif type(msg) is not list:
            self.report_error(node, FlowError(f"Node tried to send a message of type {type(msg).__name__}"), None)
            return
        wires = node._wires
        msgid = None
        for out in msg[: len(wires)]:
            for m in out if type(out) is list else (out,):
                if type(m) is dict and "_msgid" in m:
                    msgid = m["_msgid"]
                    break
            if msgid:
                break
        msgid = msgid or new_msgid()
        first = True
        for i, out in enumerate(msg[: len(wires)]):
            if out is None:
                continue
            items = out if type(out) is list else (out,)
            for target in wires[i]:
                for m in items:
                    if m is None:
                        continue
                    if type(m) is not dict:
                        self.report_error(node, FlowError(f"Node tried to send a message of type {type(m).__name__}"), None)
                        continue
                    if "_msgid" not in m:
                        m["_msgid"] = msgid
                    q.append((target, m if first else clone(m)))
                    first = False
        if q and not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._pump)

    def _pump(self) -> None:
        # Deliver what was queued before this turn (like setImmediate); what those
        # deliveries queue runs on the next turn, so timers and I/O interleave.
        self._scheduled = False
        q = self.queue
        deliver = self.deliver
        self._delivered += len(q)
        for _ in range(len(q)):
            node, msg = q.popleft()
            deliver(node, msg)
        if q and not self._scheduled:
            self._schedule()

    def deliver(self, node: Node, msg: dict) -> None:
        """Run ``node``'s handler on ``msg`` now (catch/status/complete/link-call enter here)."""
        if self.trace:
            trace_log.info("-> %s %s %s", node.type, node.id, self.redact(summary(msg)))
        try:
            result = node.on_input(msg)
        except Exception as e:
            self.report_error(node, e, msg)
            return
        if result is not None:
            if type(result) is _Coroutine:
                task = (self._loop or asyncio.get_running_loop()).create_task(result)
                self.inflight.add(task)
                task.add_done_callback(lambda t: self._finished(node, msg, t))
                return
            self.send(node, result)
        if node.auto_done and node.id in node.flow.complete_nodes:
            self.complete(node, msg)

    def _finished(self, node: Node, msg: dict, task: asyncio.Task) -> None:
        self.inflight.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.report_error(node, exc, msg)
            return
        result = task.result()
        if result is not None:
            self.send(node, result)
        if node.auto_done and node.id in node.flow.complete_nodes:
            self.complete(node, msg)

    # ---- errors, status, complete -------------------------------------------------------------
    def report_error(self, node: Node, err, msg: dict | None) -> bool:
        """Route an error to catch nodes; log it when none takes it.  True when caught."""
        text = error_text(err)
        if msg is not None and self._route_error(node, err, text, msg):
            return True
        if isinstance(err, BaseException) and not isinstance(err, FlowError) and log.isEnabledFor(logging.DEBUG):
            log.debug("traceback for %s", node.id, exc_info=err)
        log.error("[%s %s] %s", node.type, node.id, self.redact(text))
        for listener in self.error_listeners:
            listener(node, self.redact(text), kind_of(err) if isinstance(err, BaseException) else "runtime")
        return False

    def _route_error(self, node: Node, err, text: str, msg: dict) -> bool:
        count = 1
        old = msg.get("error")
        if isinstance(old, dict) and isinstance(old.get("source"), dict) and old["source"].get("id") == node.id:
            count = int(old["source"].get("count") or 0) + 1
            if count >= MAX_CATCHES:
                log.warning("[%s %s] message exceeded maximum number of catches", node.type, node.id)
                return False
        kind = kind_of(err) if isinstance(err, BaseException) else "runtime"
        source = {"id": node.id, "type": node.type, "count": count}
        if node.name:
            source["name"] = node.name
        error = {"message": self.redact(text), "kind": kind, "source": source}
        if isinstance(err, FlowError):
            error.update(err.details)
        handled = False
        uncaught_phase = False
        for catch in node.flow.catch_nodes:
            if catch.uncaught and not uncaught_phase:
                if handled:
                    break
                uncaught_phase = True
            if not catch.accepts(node.id, kind):
                continue
            m = clone(msg)
            if "error" in m:
                m["_error"] = m["error"]
            m["error"] = dict(error, source=dict(source))
            handled = True
            self.deliver(catch, m)
        return handled

    def report_status(self, node: Node, status: dict) -> None:
        for s in node.flow.status_nodes:
            if s.accepts(node.id):
                st = dict(status, source={"id": node.id, "type": node.type, **({"name": node.name} if node.name else {})})
                self.deliver(s, {"status": st, "_msgid": new_msgid()})

    def complete(self, node: Node, msg: dict) -> None:
        for c in node.flow.complete_nodes.get(node.id, ()):
            m = clone(msg)
            m["complete"] = {"source": {"id": node.id, "type": node.type, **({"name": node.name} if node.name else {})}}
            self.deliver(c, m)


def error_text(err) -> str:
    if isinstance(err, FlowError):
        return str(err)
    if isinstance(err, BaseException):
        text = str(err)
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return str(err)
