"""Run paho-mqtt clients on the asyncio event loop instead of on a thread each.

paho's ``loop_start`` gives every client a thread that waits in ``select()``, and
``select()`` cannot watch file numbers of 1024 or more: with a few hundred brokers in one
process (``--instances``) the later clients see "connection lost" forever.  Here the event
loop watches the sockets (``add_reader``/``add_writer``, epoll underneath) through paho's
external-loop callbacks, one ticker per event loop runs paho's keep-alive (``loop_misc``)
for every client, and only the blocking part of a connect (DNS, TCP, TLS handshake) runs
in a worker thread.  Reconnects back off from ``reconnect_min`` to ``reconnect_max`` with
jitter, so a thousand clients do not hammer a broker that has just restarted.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any

TICK_MIN, TICK_MAX = 0.5, 15.0  # keep-alive ticker period bounds (seconds)


class Ticker:
    """Calls ``loop_misc`` of every registered link, at a quarter of the shortest
    keep-alive: a PINGREQ is then at most that late, well inside the broker's 1.5x grace."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.links: set[Link] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, link: Link) -> None:
        self.links.add(link)
        if self._handle is None:
            self._schedule()

    def discard(self, link: Link) -> None:
        self.links.discard(link)
        if not self.links:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            _tickers.pop(self.loop, None)

    def _schedule(self) -> None:
        period = min(link.keepalive for link in self.links) / 4
        self._handle = self.loop.call_later(min(TICK_MAX, max(TICK_MIN, period)), self._tick)

    def _tick(self) -> None:
        for link in list(self.links):
            link.client.loop_misc()
        if self.links:
            self._schedule()


_tickers: dict[asyncio.AbstractEventLoop, Ticker] = {}  # an entry lives while it has links


class Link:
    """One paho client driven by the running event loop.

    ``on_connect_error(text)`` is told when a connect attempt fails before the broker
    answered (refused, unreachable, TLS); paho's own callbacks report everything after."""

    def __init__(self, client: Any, keepalive: float, reconnect_min: float, reconnect_max: float,
                 on_connect_error: Callable[[str], None]):
        self.client = client
        self.keepalive = keepalive
        self.reconnect_min, self.reconnect_max = reconnect_min, max(reconnect_min, reconnect_max)
        self.on_connect_error = on_connect_error
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._fd: int | None = None
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task | None = None
        self._closed: asyncio.Future | None = None
        self.stopping = False
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        ticker = _tickers.get(self.loop)
        if ticker is None:
            ticker = _tickers[self.loop] = Ticker(self.loop)
        ticker.add(self)
        self._connect_soon(0.0)

    def connected(self) -> None:
        """The broker accepted the connection: the next loss retries after reconnect_min."""
        self._failures = 0

    async def stop(self, timeout: float = 2.0) -> None:
        """Disconnect cleanly (DISCONNECT, so the broker drops the will) and stop retrying."""
        self.stopping = True
        if self._retry is not None:
            self._retry.cancel()
        if self._connecting is not None:
            await asyncio.wait({self._connecting}, timeout=timeout)
        if self._fd is not None:
            self._closed = self.loop.create_future()
            self.client.disconnect()  # the DISCONNECT is written by the loop, then paho closes
            await asyncio.wait({self._closed}, timeout=timeout)
        if self._fd is not None:  # the broker did not let us finish: close it ourselves
            self._close_now()
        ticker = _tickers.get(self.loop)
        if ticker is not None:
            ticker.discard(self)

    # ---- connecting --------------------------------------------------------------------------
    def _connect_soon(self, delay: float) -> None:
        if not self.stopping:
            self._retry = self.loop.call_later(delay, self._connect)

    def _connect(self) -> None:
        self._retry = None
        if not self.stopping and self._connecting is None and self._fd is None:
            self._connecting = self.loop.create_task(self._connect_in_thread())

    async def _connect_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self.client.reconnect)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            self._connecting = None
            self.on_connect_error(_describe(e))
            self._backoff()
            return
        self._connecting = None
        if self.stopping:  # stop() gave up waiting for this connect: do not leave the socket open
            self._close_now()

    def _close_now(self) -> None:
        sock = self.client.socket()
        if self._fd is not None:
            self._unwatch(self._fd)
        if sock is not None:
            sock.close()

    def _backoff(self) -> None:
        delay = min(self.reconnect_max, self.reconnect_min * 2 ** self._failures)
        self._failures += 1
        self._connect_soon(delay * random.uniform(0.75, 1.0))

    # ---- paho's external-loop callbacks (the connect thread calls the first two) --------------
    def _on_loop(self, fn: Callable, *args) -> None:
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the engine stopped while this connect was under way
                pass

    def _socket_open(self, client, userdata, sock) -> None:
        self._on_loop(self._watch, sock)

    def _want_write(self, client, userdata, sock) -> None:
        self._on_loop(self._watch_write, sock.fileno())

    def _done_writing(self, client, userdata, sock) -> None:
        self._on_loop(self._unwatch_write, sock.fileno())

    def _socket_close(self, client, userdata, sock) -> None:
        self._on_loop(self._lost, sock.fileno())

    # ---- event-loop side ---------------------------------------------------------------------
    def _watch(self, sock) -> None:
        self._fd = sock.fileno()
        self.loop.add_reader(self._fd, self._readable, sock)

    def _watch_write(self, fd: int) -> None:
        if fd == self._fd:
            self.loop.add_writer(fd, self.client.loop_write)

    def _unwatch_write(self, fd: int) -> None:
        if fd == self._fd:
            self.loop.remove_writer(fd)

    def _unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self._fd = None

    def _readable(self, sock) -> None:
        client = self.client
        client.loop_read()
        # TLS: records already decrypted sit in the SSL buffer, where epoll cannot see them.
        pending = getattr(sock, "pending", None)
        while pending is not None and client.socket() is sock and pending():
            client.loop_read()

    def _lost(self, fd: int) -> None:
        if fd == self._fd:
            self._unwatch(fd)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._backoff()


def _describe(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"cannot connect: {text}"
