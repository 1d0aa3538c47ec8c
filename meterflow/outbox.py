"""One delivery mechanism for every output that must not lose a message.

An :class:`Outbox` sits between an output node (MQTT, e-mail, InfluxDB, Home Assistant)
and the far side.  ``put`` never blocks and never fails: the item joins a bounded
in-memory queue (and, with a spool, a JSON-lines file on disk, fsync'ed) and is delivered
in order, one batch at a time, by the node's *sink*::

    async def sink(batch: list[Item]) -> None: ...

The sink delivers the items (calling :meth:`Outbox.mark_done` for each one it has
delivered when it delivers only part of a batch; items it marks ``handed`` are done only
when it calls ``mark_done`` for them, see :class:`Item`) or raises:

* :class:`Retry` — transient (connection refused, timeout, HTTP 429/5xx, SMTP 4xx): the
  batch is tried again after a capped exponential backoff with jitter, timed by the
  engine clock (``retry_after`` from the far side is honoured, capped at 10 minutes);
* :class:`Reject` — permanent (HTTP 400, SMTP 5xx): the batch is dropped, counted, logged
  and reported to the node's catch nodes with the message that produced it;
* :class:`Split` — too large (HTTP 413): the batch is halved and sent again.

When the queue is full the **oldest** item is dropped (as Telegraf's buffer does), with
one log line per drop.  ``delivered`` / ``retried`` / ``dropped`` are counted
(:meth:`Outbox.stats`).  With a spool, what was not delivered survives a restart and
is replayed when the node starts again.  :meth:`Outbox.drain` (the node's ``stop``)
retries at once, waits up to the engine's drain time and leaves the rest in the spool.

Nodes get the common YAML fields from :data:`FIELDS` and build an outbox with
:func:`for_node`; see ``meterflow/nodes/influx.py`` for a complete example.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import redact
from .errors import FlowError
from .node import Node
from .schema import Field, parse_duration

if TYPE_CHECKING:  # pragma: no cover
    from .clock import Clock, Timer

log = logging.getLogger("meterflow.outbox")

MAX_RETRY_AFTER = 600.0  # a far side asking for more than 10 min is capped, as Telegraf does
DEFAULT_DRAIN = 10.0


# ---- what a sink raises ------------------------------------------------------------------
class Retry(Exception):
    """Transient failure: try the batch again later."""

    def __init__(self, error: FlowError | str, retry_after: float | None = None, quiet: bool = False):
        self.error = error if isinstance(error, FlowError) else FlowError(str(error), kind="connect")
        self.retry_after = retry_after
        self.quiet = quiet  # expected (e.g. still connecting at start): log at debug level only
        super().__init__(str(self.error))


class Reject(Exception):
    """Permanent failure: drop these items (default: the whole batch) and report ``error``."""

    def __init__(self, error: FlowError | str, items: list[Item] | None = None):
        self.error = error if isinstance(error, FlowError) else FlowError(str(error))
        self.items = items
        super().__init__(str(self.error))


class Split(Exception):
    """The batch is too large for the far side: halve it and send again."""


@dataclass(eq=False)
class Item:
    seq: int
    data: Any  # JSON-serialisable: what the spool keeps
    msg: dict | None = None  # the message it came from (memory only; None after a replay)
    attempts: int = 0
    #: Set by a sink that hands the item over and learns of its delivery later (MQTT:
    #: paho holds it until the PUBACK, and resends it after a reconnect).  A handed item
    #: stays queued (and spooled) until the sink calls :meth:`Outbox.mark_done`; it is
    #: not offered to the sink again nor chosen as the "oldest" to drop.  This lets a
    #: sink pipeline: return once the batch is handed and take the next one.
    handed: bool = False
    state: dict = field(default_factory=dict)  # sink scratch space (not spooled)
    done: bool = False


Sink = Callable[[list[Item]], Awaitable[None]]


# ---- the spool ---------------------------------------------------------------------------------
class Spool:
    """Append-only JSON lines: ``{"seq": n, "data": ...}`` per item, ``{"ack": [n, ...]}``
    when items leave (delivered or dropped).  Compacted at open and when acks pile up."""

    def __init__(self, path: Path, sync: bool = True):
        self.path = path
        self.sync = sync
        self._fh = None
        self._dirty = False
        self._sync_pending = False
        self.acked_since_compact = 0

    def load(self) -> list[tuple[int, Any]]:
        """Pending items, in order.  A torn last line (a crash mid-write) is skipped."""
        if not self.path.exists():
            return []
        pending: dict[int, Any] = {}
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if "ack" in rec:
                    for s in rec["ack"]:
                        pending.pop(s, None)
                else:
                    pending[int(rec["seq"])] = rec["data"]
            except (ValueError, KeyError, TypeError):
                log.warning("spool %s: line %d is damaged (%s...); skipped", self.path, n, line[:40])
        return sorted(pending.items())

    def open(self, pending: Iterable[Item]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.compact(pending)

    def compact(self, pending: Iterable[Item]) -> None:
        """Rewrite the file with only what is pending (write, fsync, rename)."""
        if self._fh is not None:
            self._fh.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for item in pending:
                fh.write(_line({"seq": item.seq, "data": item.data}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        # Kept open for appends, with a small buffer: a thousand instances each hold one.
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1024)  # noqa: SIM115
        self.acked_since_compact = 0

    def append(self, item: Item) -> None:
        if self._fh is None:
            return  # not open yet: open() writes every pending item
        self._fh.write(_line({"seq": item.seq, "data": item.data}))
        self._flush(sync=self.sync)

    def ack(self, seqs: list[int]) -> None:
        if self._fh is None or not seqs:
            return
        self._fh.write(_line({"ack": seqs}))
        self.acked_since_compact += len(seqs)
        self._flush(sync=False)  # losing an ack in a crash only means a duplicate, never a loss

    def _flush(self, sync: bool) -> None:
        # Items put in the same event-loop turn share one write + fsync (group commit).
        self._dirty = True
        if sync:
            self._sync_pending = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        if not getattr(self, "_scheduled", False):
            self._scheduled = True
            loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._scheduled = False
        if self._fh is None or not self._dirty:
            return
        self._fh.flush()
        if self._sync_pending:
            os.fsync(self._fh.fileno())
        self._dirty = self._sync_pending = False

    def close(self, pending: Iterable[Item]) -> None:
        if self._fh is None:
            return
        self.flush_now()
        self.compact(pending)
        self._fh.close()
        self._fh = None


def _line(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n"


# ---- the outbox ------------------------------------------------------------------------------
class Outbox:
    def __init__(self, name: str, sink: Sink, clock: Clock, *, limit: int = 10000, batch_size: int = 1,
                 batch_interval: float = 0.0, retry: bool = True, retry_min: float = 1.0, retry_max: float = 60.0,
                 jitter: float = 0.2, spool: str | os.PathLike | None = None, spool_sync: bool = True,
                 on_delivered: Callable[[Item], None] | None = None,
                 on_dropped: Callable[[Item, FlowError], None] | None = None,
                 on_state: Callable[[str, str], None] | None = None,
                 track: Callable[[asyncio.Task], None] | None = None,
                 logger: logging.Logger | None = None):
        self.name = name
        self.sink = sink
        self.clock = clock
        self.limit = max(1, int(limit))
        self.batch_size = max(1, int(batch_size))
        self.batch_interval = float(batch_interval)
        self.retry = retry
        self.retry_min = max(0.001, float(retry_min))
        self.retry_max = max(self.retry_min, float(retry_max))
        self.jitter = min(max(jitter, 0.0), 1.0)
        self.on_delivered = on_delivered
        self.on_dropped = on_dropped
        self.on_state = on_state
        self.track = track
        self.log = logger or log
        self.spool = Spool(Path(spool), spool_sync) if spool else None
        self.items: dict[int, Item] = {}  # insertion-ordered: the queue
        self.delivered = self.retried = self.dropped = 0
        self._seq = 0
        self._task: asyncio.Task | None = None
        self._batch: list[Item] = []
        self._batch_cap = self.batch_size
        self._timer: Timer | asyncio.TimerHandle | None = None  # backoff
        self._batch_timer: Timer | None = None
        self._failures = 0
        self._warned = False  # a warning was logged for the current streak of failures
        self._flush = False
        self._draining = False
        self._closed = False
        self._opened = False
        self._empty: asyncio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def open(self) -> int:
        """Replay the spool (if any); returns how many items came back."""
        self._opened = True
        replayed = 0
        if self.spool is not None:
            early = list(self.items.values())  # put before open: after the replayed ones
            self.items.clear()
            for seq, data in self.spool.load():
                self.items[seq] = Item(seq, data)
                self._seq = max(self._seq, seq)
                replayed += 1
            for item in early:
                self._seq += 1
                item.seq = self._seq
                self.items[item.seq] = item
            self.spool.open(self.items.values())
            if replayed:
                self.log.info("%s: replaying %d message(s) from spool %s", self.name, replayed, self.spool.path)
        self._pump()
        return replayed

    async def drain(self, timeout: float = DEFAULT_DRAIN) -> bool:
        """Deliver what is queued within ``timeout`` seconds, then close.  True when nothing is left.

        Shutdown is bounded by wall time (the engine's drain time), so the wait and the
        retries here use the event loop's time: a virtual clock does not run during stop.
        """
        if self._closed:
            return not self.items
        self._draining = True
        self._cancel_timers()
        self._failures = min(self._failures, 1)
        self._pump()
        if self.items:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), max(0.0, timeout))
            except TimeoutError:
                pass
        self._closed = True
        self._cancel_timers()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        left = list(self.items.values())
        if left:
            if self.spool is not None:
                self.log.warning("%s: %d message(s) not delivered at shutdown; kept in spool %s for the next start",
                                 self.name, len(left), self.spool.path)
            else:
                self.log.error("%s: %d message(s) not delivered at shutdown and lost (no spool configured)",
                               self.name, len(left))
                for item in left:
                    self.dropped += 1
                    self.log.warning("%s: dropped at shutdown: %s", self.name, _describe(item))
        if self.spool is not None:
            self.spool.close(self.items.values())
        if not self.spool:
            self.items.clear()
        return not left

    # ---- putting ----------------------------------------------------------------------------
    def put(self, data: Any, msg: dict | None = None) -> Item:
        """Queue ``data`` (JSON-serialisable); ``msg`` is kept for error reports and ``done``."""
        self._seq += 1
        item = Item(self._seq, data, msg)
        if self._closed:
            self.dropped += 1
            self.log.error("%s: dropped (output already stopped): %s", self.name, _describe(item))
            return item
        while len(self.items) >= self.limit:
            if not self._drop_oldest():
                break
        self.items[item.seq] = item
        if self.spool is not None:
            self.spool.append(item)
        self._pump()
        return item

    def _drop_oldest(self) -> bool:
        busy = {id(i) for i in self._batch}
        for victim in self.items.values():
            if id(victim) not in busy and not victim.handed:
                break
        else:
            return False
        self._remove(victim)
        self.dropped += 1
        self.log.warning("%s: queue full (%d); dropped the oldest message: %s", self.name, self.limit, _describe(victim))
        return True

    # ---- delivery --------------------------------------------------------------------------
    def kick(self) -> None:
        """Try again now (the far side is back, e.g. the MQTT broker reconnected)."""
        if self._timer is not None:
            self._cancel_backoff()
            self._pump()

    def release(self, item: Item) -> None:
        """A handed item came back undelivered (e.g. a QoS 0 message lost with the connection):
        offer it to the sink again."""
        if item.handed and not item.done:
            item.handed = False
            self._pump()

    def fail(self, item: Item, error: FlowError) -> None:
        """A handed item was refused for good: drop it, count it, report it."""
        item.handed = False
        self._reject([item], error)

    def mark_done(self, item: Item) -> None:
        """``item`` reached the far side (a sink may call this before it returns)."""
        if item.done:
            return
        item.done = True
        if self.items.pop(item.seq, None) is None:
            return
        self.delivered += 1
        if self.spool is not None:
            self.spool.ack([item.seq])
            self._maybe_compact()
        if self.on_delivered is not None:
            try:
                self.on_delivered(item)
            except Exception as e:  # a callback bug must not stall the queue
                self.log.error("%s: delivery callback failed: %s", self.name, redact.redact(e))
        self._check_empty()

    def _pump(self) -> None:
        if not self._opened or self._task is not None or self._closed or not self.items:
            self._check_empty()
            return
        if self._timer is not None:
            return  # backing off
        if (self.batch_interval > 0 and len(self.items) < self._batch_cap and not self._draining
                and not self._flush and not self._failures):
            if self._batch_timer is None:
                self._batch_timer = self.clock.call_later(self.batch_interval, self._batch_due)
            return
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        batch = []
        for item in self.items.values():
            if item.handed:
                continue  # with the far side already; mark_done will come
            batch.append(item)
            if len(batch) >= self._batch_cap:
                break
        if not batch:
            return
        self._batch = batch
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._attempt(batch))
        if self.track is not None:
            self.track(self._task)

    def _batch_due(self) -> None:
        self._batch_timer = None
        self._flush = True  # the interval is up: send what there is, even a short batch
        try:
            self._pump()
        finally:
            self._flush = False

    async def _attempt(self, batch: list[Item]) -> None:
        for item in batch:
            item.attempts += 1
        try:
            await self.sink(batch)
        except asyncio.CancelledError:
            self._task = None
            raise
        except Split:
            if len(batch) <= 1:
                self._reject(batch, FlowError("a single item is too large for the far side", kind="http"))
            else:
                self._batch_cap = max(1, len(batch) // 2)
                self.log.info("%s: batch of %d too large; sending halves", self.name, len(batch))
        except Retry as e:
            pending = [i for i in batch if not i.done]
            if not self.retry:
                self._reject(pending, e.error)
            else:
                self._backoff(pending, e)
        except Reject as e:
            self._reject([i for i in (e.items if e.items is not None else batch) if not i.done], e.error)
        except Exception as e:  # a bug or an unexpected failure: report it, do not block the queue forever
            err = e if isinstance(e, FlowError) else FlowError(f"{type(e).__name__}: {e}")
            self._reject([i for i in batch if not i.done], err)
        else:
            for item in batch:
                if not item.handed:
                    self.mark_done(item)
            if self._failures and self._warned:
                self.log.info("%s: delivering again after %d failed attempt(s)", self.name, self._failures)
                self._state("green", f"delivered ({len(self.items)} queued)" if self.items else "delivered")
            self._failures = 0
            self._warned = False
            if len(batch) >= self._batch_cap:
                self._batch_cap = min(self.batch_size, self._batch_cap * 2)
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._batch = []
        self._pump()

    def _backoff(self, pending: list[Item], e: Retry) -> None:
        self._failures += 1
        self.retried += len(pending)
        delay = min(self.retry_max, self.retry_min * 2 ** min(self._failures - 1, 30))
        delay *= 1 - self.jitter * random.random()
        if e.retry_after is not None:
            delay = max(delay, min(float(e.retry_after), MAX_RETRY_AFTER))
        text = redact.redact(e.error)
        if not self._warned and not e.quiet:
            self._warned = True
            self.log.warning("%s: %s; %d message(s) queued, retrying in %.1fs", self.name, text, len(self.items), delay)
        else:
            self.log.debug("%s: attempt %d failed: %s; retrying in %.1fs", self.name, self._failures, text, delay)
        self._state("yellow", f"retrying: {e.error.kind} ({len(self.items)} queued)")
        if self._draining:
            # Stopping: the engine's drain time runs on the wall clock (see drain()).
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(min(delay, 0.25), self._retry_due)
        else:
            self._timer = self.clock.call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._timer = None
        self._pump()

    def _reject(self, items: list[Item], error: FlowError) -> None:
        for item in items:
            if item.seq not in self.items:
                continue
            self._remove(item)
            self.dropped += 1
            self.log.error("%s: dropped (%s): %s — %s", self.name, error.kind, _describe(item), redact.redact(error))
            if self.on_dropped is not None:
                try:
                    self.on_dropped(item, error)
                except Exception as e:
                    self.log.error("%s: drop callback failed: %s", self.name, redact.redact(e))
        self._state("red", f"dropped {self.dropped}: {error.kind}")

    def _remove(self, item: Item) -> None:
        if self.items.pop(item.seq, None) is not None and self.spool is not None:
            self.spool.ack([item.seq])
            self._maybe_compact()
        self._check_empty()

    def _maybe_compact(self) -> None:
        sp = self.spool
        if sp is not None and sp.acked_since_compact > max(1000, 2 * len(self.items)):
            sp.flush_now()
            sp.compact(self.items.values())

    def _check_empty(self) -> None:
        if not self.items and self._empty is not None:
            self._empty.set()

    def _cancel_backoff(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_timers(self) -> None:
        self._cancel_backoff()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None

    def _state(self, fill: str, text: str) -> None:
        if self.on_state is not None:
            self.on_state(fill, text)

    def stats(self) -> dict:
        return {"queued": len(self.items), "delivered": self.delivered, "retried": self.retried,
                "dropped": self.dropped}


def _describe(item: Item, limit: int = 160) -> str:
    try:
        text = json.dumps(item.data, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(item.data)
    text = redact.redact(text)
    return f"#{item.seq} {text if len(text) <= limit else text[: limit - 1] + '…'}"


# ---- for node authors ----------------------------------------------------------------------------
#: The YAML fields every outbox-backed node accepts (merge into the node's ``schema``).
FIELDS: dict[str, Field] = {
    "queue_limit": Field("int", "most messages held while the far side is down; when full the oldest is "
                         "dropped and logged", default=10000, minimum=1),
    "retry": Field("bool", "retry transient failures (connection, timeout, 429/5xx, SMTP 4xx); "
                   "false: report them to catch at once", default=True),
    "retry_min": Field("duration", "first retry delay; doubles per failure, with jitter", default=1.0),
    "retry_max": Field("duration", "longest retry delay", default=60.0),
    "spool": Field("str", "directory for an on-disk spool (JSON lines, fsync'ed) so queued messages survive a "
                   "restart; relative to the flow file"),
    "drain": Field("duration", "how long stopping waits to deliver what is queued (default: the engine's drain time)"),
}

BATCH_FIELDS: dict[str, Field] = {
    "batch_size": Field("int", "most items per request", default=1000, minimum=1),
    "batch_interval": Field("duration", "wait this long for a batch to fill before sending a short one",
                            default=1.0),
}


def for_node(node: Node, sink: Sink, *, batch_size: int = 1, batch_interval: float = 0.0, **kw) -> Outbox:
    """An outbox configured from ``node.config`` (:data:`FIELDS`), timed by the engine clock,
    whose delivery attempts count as in-flight work for the engine (``settle``, shutdown)."""
    c = node.config
    engine = node.flow.engine

    def track(task: asyncio.Task) -> None:
        engine.inflight.add(task)
        task.add_done_callback(engine.inflight.discard)

    def state(fill: str, text: str) -> None:
        node.status(fill, "dot" if fill == "green" else "ring", text)

    spool = None
    if c.get("spool"):
        base = Path(getattr(node.flow.spec, "file", "") or ".").parent
        spool = (base / str(c["spool"])) / f"{node.id}.jsonl"
    kw.setdefault("on_state", state)
    return Outbox(
        f"{node.type} {node.id}", sink, node.clock,
        limit=int(c.get("queue_limit") or 10000),
        batch_size=int(c.get("batch_size") or batch_size),
        batch_interval=parse_duration(c["batch_interval"]) if c.get("batch_interval") is not None else batch_interval,
        retry=c.get("retry", True) is not False,
        retry_min=parse_duration(c.get("retry_min") if c.get("retry_min") is not None else 1.0),
        retry_max=parse_duration(c.get("retry_max") if c.get("retry_max") is not None else 60.0),
        spool=spool, track=track, logger=node.log, **kw)


def drain_time(node: Node) -> float:
    """The node's ``drain`` field, else what is left of the engine's shutdown drain time."""
    if node.config.get("drain") is not None:
        return parse_duration(node.config["drain"])
    return node.flow.engine.drain_remaining()


def tls_context(node: Node, profile_id: str):
    """The ``ssl.SSLContext`` of the tls-profile config node ``profile_id`` (re-read when its
    files change on disk, so each new connection uses a renewed certificate)."""
    return node.config_node(profile_id).ssl_context()


class OutputNode(Node):
    """A node whose deliveries go through an :class:`Outbox`: queued while the far side is
    down, retried, optionally spooled, drained at stop.  A subclass sets ``self.outbox`` in
    ``setup`` (usually ``for_node(self, self._sink, ...)``); by default a delivered message
    completes (``done``) and a dropped one is reported to catch nodes."""

    outputs = 0
    auto_done = False  # done when the far side has the message

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return [str(i) for i in range(cls.outputs)]

    async def start(self) -> None:
        self.outbox.open()

    async def stop(self) -> None:
        await self.outbox.drain(drain_time(self))

    def _delivered(self, item: Item) -> None:
        if item.msg is not None:
            self.done(item.msg)

    def _dropped(self, item: Item, error: FlowError) -> None:
        if item.msg is not None:
            self.error(error, item.msg)
