"""Engine benchmark (not a timed test): prints per-hop cost, fan-out and switch throughput,
start-to-first-message, idle RSS and delay timing error, with medians over repetitions.

    python bench/engine.py [--quick]

Node-RED 5.0.7 figures measured on this kind of machine (from the engine issue) are shown
for orientation; `python bench/nodered/run.py` measures both side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meterflow.flowfile import load_flow
from meterflow.node import Node
from meterflow.runtime import Engine
from meterflow.testing import registry_with

NODE_RED = {"hop_us": 1.76, "start_ms": 319.0, "idle_rss_mb": 137.0, "delay_p99_ms": 1.2}


class Sink(Node):
    """Counts arrivals and wakes the generator when a batch is complete."""

    type = "bench-sink"
    summary = "benchmark counter"
    outputs = 0

    def setup(self):
        self.count = 0
        self.target = 0
        self.waiter = None

    def on_input(self, msg):
        self.count += 1
        if self.count >= self.target and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


REG = registry_with(Sink)


def chain_flow(n: int) -> str:
    def next_id(i: int) -> str:
        return f"c{i + 1}" if i + 1 < n else "sink"

    nodes = [f"  - {{id: c{i}, type: change, rules: [{{set: topic, to: t{i}}}], wires: [{next_id(i)}]}}"
             for i in range(n)]
    return "meterflow: 1\nnodes:\n" + "\n".join(nodes) + "\n  - {id: sink, type: bench-sink}\n"


FANOUT = """meterflow: 1
nodes:
  - {id: src, type: junction, wires: [sink, sink2, sink3, sink4]}
  - {id: sink, type: bench-sink}
  - {id: sink2, type: bench-sink}
  - {id: sink3, type: bench-sink}
  - {id: sink4, type: bench-sink}
"""

SWITCH = """meterflow: 1
nodes:
  - id: sw
    type: switch
    property: statusCode
    rules:
      - {op: eq, value: 200}
      - {op: eq, value: 404}
      - {op: else}
    wires: [[sink], [sink], [sink]]
  - {id: sink, type: bench-sink}
"""


async def pump(text: str, first: str, make_msg, total: int, batch: int = 1000, sinks=("sink",)) -> float:
    """Seconds to push ``total`` messages through, ``batch`` at a time."""
    engine = Engine()
    engine.load(load_flow("bench.yaml", REG, text=text))
    await engine.start()
    src = engine.find(first)
    sink_nodes = [engine.find(s) for s in sinks]
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(batch, total - sent)
        last = sink_nodes[-1]
        last.target = last.count + n
        last.waiter = loop.create_future()
        for _ in range(n):
            engine.queue.append((src, make_msg()))
        engine._schedule()
        await last.waiter
        sent += n
    elapsed = time.perf_counter() - start
    await engine.stop()
    return elapsed


def median_of(fn, reps: int) -> float:
    return statistics.median(fn() for _ in range(reps))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_to_first(reps: int) -> tuple[float, float]:
    """Median ms from process start to the first debug line, and idle RSS (MB) after it."""
    flow = "meterflow: 1\nname: bench-start\nnodes:\n" \
           "  - {id: go, type: inject, once: true, once_delay: 0, payload: hello, wires: [show]}\n" \
           "  - {id: hourly, type: inject, repeat: 1h}\n" \
           "  - {id: show, type: debug}\n"
    times, rss = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "start.yaml"
        path.write_text(flow)
        env = dict(os.environ, METERFLOW_RUNTIME_DIR=tmp)
        for _ in range(reps):
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "meterflow.cli", "run", str(path), "--log-format", "json"],
                                    stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
            for line in proc.stderr:
                if '"hello"' in line:
                    times.append((time.perf_counter() - t0) * 1000)
                    break
            time.sleep(1.0)
            rss.append(rss_mb(proc.pid))
            proc.terminate()
            proc.wait(10)
    return statistics.median(times), statistics.median(rss)


async def delay_error(n: int = 1000) -> tuple[float, float]:
    """p50 / p99 lateness (ms) of a 100 ms delay node over n messages sent 1 ms apart."""
    text = "meterflow: 1\nnodes:\n  - {id: d, type: delay, delay: 100ms, wires: [sink]}\n  - {id: sink, type: bench-sink}\n"
    engine = Engine()
    engine.load(load_flow("bench.yaml", REG, text=text))
    await engine.start()
    src, sink = engine.find("d"), engine.find("sink")
    late: list[float] = []
    inner = sink.on_input

    def record(msg):
        late.append((time.perf_counter() - msg["t0"]) * 1000 - 100)
        return inner(msg)

    sink.on_input = record
    for _ in range(n):
        engine.queue.append((src, {"payload": 1, "t0": time.perf_counter()}))
        engine._schedule()
        await asyncio.sleep(0.001)
    while len(late) < n:
        await asyncio.sleep(0.05)
    await engine.stop()
    late.sort()
    return statistics.median(late), late[int(0.99 * (n - 1))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer messages and repetitions")
    args = ap.parse_args()
    reps = 3 if args.quick else 5
    total = 20_000 if args.quick else 200_000
    types = REG.types

    rows = []
    t = median_of(lambda: asyncio.run(pump(chain_flow(10), "c0", lambda: {"payload": 1}, total)), reps)
    hop_us = t / (total * 10) * 1e6
    rows.append(("per hop, chain of 10 change nodes", f"{hop_us:.2f} µs", f"{NODE_RED['hop_us']} µs",
                 f"{hop_us / NODE_RED['hop_us']:.2f}x"))

    fan_total = total // 4
    sinks = ("sink", "sink2", "sink3", "sink4")
    t = median_of(lambda: asyncio.run(pump(FANOUT, "src", lambda: {"payload": 1}, fan_total, sinks=sinks)), reps)
    rows.append(("4-way fan-out, small msg", f"{fan_total / t:,.0f} msgs/s", "36,300 msgs/s", f"{36300 / (fan_total / t):.2f}x"))
    big = {f"k{i}": "x" * 30 for i in range(1000)}  # ~40 KB as JSON
    n_big = 2_000 if args.quick else 10_000
    t = median_of(lambda: asyncio.run(pump(FANOUT, "src", lambda: {"payload": big}, n_big, sinks=sinks)), reps)
    rows.append(("4-way fan-out, 40 KB payload", f"{n_big / t:,.0f} msgs/s", "", ""))

    if "switch" in types:
        n_sw = total
        codes = [200, 404, 500]
        i = iter(range(10**9))
        t = median_of(lambda: asyncio.run(pump(SWITCH, "sw", lambda: {"statusCode": codes[next(i) % 3]}, n_sw)), reps)
        rows.append((f"switch routing (N={n_sw:,}, batches of 1,000)", f"{n_sw / t:,.0f} msgs/s", "23,200 msgs/s",
                     f"{23200 / (n_sw / t):.2f}x"))
    if "inject" in types:
        ms, rss = start_to_first(reps)
        rows.append(("start to first message (`meterflow run`)", f"{ms:.0f} ms", f"{NODE_RED['start_ms']:.0f} ms",
                     f"{ms / NODE_RED['start_ms']:.2f}x"))
        rows.append(("idle RSS", f"{rss:.1f} MB", f"{NODE_RED['idle_rss_mb']:.0f} MB", f"{rss / NODE_RED['idle_rss_mb']:.2f}x"))
    if "delay" in types:
        p50, p99 = asyncio.run(delay_error(300 if args.quick else 1000))
        rows.append(("100 ms delay error p50 / p99", f"{p50:+.2f} / {p99:+.2f} ms", "+0.08 / +1.2 ms",
                     f"{p99 / NODE_RED['delay_p99_ms']:.2f}x (p99)"))

    print(f"meterflow engine benchmark — Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, medians of {reps}")
    print("(cost ratios: meterflow / Node-RED reference, lower is better)\n")
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'meterflow':>22}  {'Node-RED 5.0.7':>16}  ratio")
    for name, ours, theirs, ratio in rows:
        print(f"{name:<{w}}  {ours:>22}  {theirs:>16}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
