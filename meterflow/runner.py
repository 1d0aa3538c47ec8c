"""``meterflow run``: start the engine, serve the control socket, stop cleanly on a signal.

The first SIGINT/SIGTERM stops the sources, lets in-flight messages finish (within
``--drain-timeout``), stops the nodes, flushes context and exits 0.  A second signal
exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from .runtime import Engine

log = logging.getLogger("meterflow")


async def run(specs, *, trace: bool = False, drain_timeout: float = 10.0, control: bool = True,
              engine: Engine | None = None) -> int:
    """Run flows: ``specs`` holds FlowSpecs or ``(instance name or None, FlowSpec)`` pairs."""
    engine = engine or Engine(trace=trace)
    for item in specs:
        instance, spec = item if isinstance(item, tuple) else (None, item)
        engine.load(spec, instance)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: stopping (send it again to force)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    servers = []
    try:
        await engine.start()
    except Exception as e:
        log.error("could not start: %s", engine.redact(e))
        await engine.stop(drain_timeout=0)
        return 1
    if control:
        from .control import ControlServer, socket_path

        by_file: dict[str, list] = {}
        for flow in engine.flows:
            by_file.setdefault(flow.spec.name, []).append(flow)
        for name, flows in by_file.items():
            server = ControlServer(flows, socket_path(name))
            try:
                await server.start()
                servers.append(server)
            except OSError as e:
                log.warning("control socket %s unavailable (%s); `meterflow inject` will not reach this run",
                            server.path, e)
    if len(engine.flows) > 5:
        log.info("running %d flows (%d nodes)", len(engine.flows), sum(len(f.nodes) for f in engine.flows))
    else:
        log.info("running %s", ", ".join(f"{f.name} ({len(f.nodes)} nodes)" for f in engine.flows))
    await stop.wait()
    for server in servers:
        await server.stop()
    drained = await engine.stop(drain_timeout=drain_timeout)
    log.info("stopped%s", "" if drained else " (drain timed out)")
    return 0
