"""Many meters in one process (not a timed test): N instances of ``flows/smt-token.yaml`` in
one ``meterflow run --instances`` process, all reading at the same instant.

    python bench/scale.py [--meters 1000] [--latency-ms 50] [--wait 1] [--reps 3] [--quick]

Each meter has its own credential (its own SMT user, ESIID and meter number) in a temporary
encrypted store and its own topic prefix and state directory; each does token -> ODR -> two
PEN polls -> read -> MQTT against the SMT sandbox (token mode, ``--latency-ms`` added to every
request, rate limits raised) and a real mosquitto, both started here on loopback ports.

The engine runs in a subprocess (the real CLI), so its figures are its own: the sandbox and
the MQTT subscriber live in this process.  Every instance's read is started by the flow's
own hourly inject, given a cron (``SMT_CRON``) that all instances share and that fires a few
seconds after the engine reported it was running: one instant, no control-socket round trips.

Reported per repetition, then the median:

* wall: from the cron instant to the last meter's first reading received by a subscriber to
  ``<prefix>/+/reading`` (every meter counted once);
* critical path: what one meter alone must wait: the flow's waits (first poll delay + one
  pending delay per PEN answer) plus one ``--latency-ms`` per HTTP round trip (token, ODR and
  three status polls: 5);
* wall / critical (target <= 1.2);
* peak RSS of the meterflow process (VmHWM; target <= 150 MB), RSS once started, start-up
  time, CPU seconds (utime + stime) for the read cycle and for the whole run.

``--py-spy FILE.svg`` records a flame graph of the engine from the moment it is running to
the last reading (``.json``: speedscope, other names: collapsed stacks; ``pip install py-spy``;
needs ptrace rights, e.g. root).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from common import context_switches, cpu_seconds, machine, proc_status, table  # noqa: E402
from services import Mosquitto, _binary  # noqa: E402

from meterflow.credentials import CredentialStore  # noqa: E402
from meterflow.sandbox.smt import SmtSandbox  # noqa: E402

FLOW = ROOT / "flows" / "smt-token.yaml"
PENDING_POLLS = 2  # the sandbox answers PEN twice, then the reading
ROUND_TRIPS = 3 + PENDING_POLLS  # token, ODR, PEN polls, the final status poll
FIELDS = ("username", "password", "esiid", "meter")


# ---- credentials -----------------------------------------------------------------------------
def meter_names(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"m{i:0{width}d}" for i in range(1, n + 1)]


def meter_secrets(name: str, i: int) -> dict[str, str]:
    return {"username": f"user-{name}", "password": f"pw-{name}-{i * 7919 % 100003}",
            "esiid": f"1044372{i:010d}", "meter": f"{i:09d}LG"}


def write_store(path: Path, key_file: Path, creds: dict[str, dict[str, str]], one_by_one: int) -> dict:
    """The store for every meter.  The first ``one_by_one`` meters go through
    ``CredentialStore.set`` (what ``meterflow creds set`` does) to time it; the rest are written
    in one ``set_many``: ``set`` rewrites and fsyncs the whole file for every field, so N
    meters one by one cost O(N^2)."""
    store = CredentialStore(path, key_file=key_file)
    names = list(creds)
    t0 = time.perf_counter()
    for name in names[:one_by_one]:
        for f, v in creds[name].items():
            store.set(name, f, v)
    timed = len(names[:one_by_one]) * len(FIELDS)
    small = (time.perf_counter() - t0) / timed if timed else 0.0
    t0 = time.perf_counter()
    store.set_many((name, f, v) for name in names[one_by_one:] for f, v in creds[name].items())
    bulk = time.perf_counter() - t0
    # One more set on the full store (the last meter's values again): the cost at full size.
    t0 = time.perf_counter()
    last = names[-1]
    for f, v in creds[last].items():
        store.set(last, f, v)
    full = (time.perf_counter() - t0) / len(FIELDS)
    return {"set_small_ms": small * 1000, "set_full_ms": full * 1000, "timed_sets": timed,
            "one_by_one_s": (small + full) / 2 * len(names) * len(FIELDS),  # linear in the file size
            "bulk_s": bulk, "bulk_meters": len(names) - one_by_one, "store_kb": path.stat().st_size / 1024}


# ---- MQTT ------------------------------------------------------------------------------------
class Readings:
    """Subscriber to ``<prefix>/+/reading`` and ``/alert``: the first reading per meter, with the time."""

    def __init__(self, port: int, prefix: str):
        import paho.mqtt.client as paho

        self.first: dict[str, float] = {}
        self.alerts: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.all_in = threading.Event()
        self.expect = 0
        subscribed = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe([(f"{prefix}/+/reading", 1), (f"{prefix}/+/alert", 1)])
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        if not subscribed.wait(10):
            raise RuntimeError("the subscriber did not subscribe")

    def _message(self, client, userdata, m) -> None:
        now = time.time()
        meter = m.topic.split("/")[-2]
        with self.lock:
            if m.topic.endswith("/alert"):
                self.alerts.append((meter, m.payload))
            elif meter not in self.first:
                self.first[meter] = now
                if self.expect and len(self.first) >= self.expect:
                    self.all_in.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- one run ---------------------------------------------------------------------------------
@dataclass
class Run:
    meters: int
    startup_s: float = 0.0  # process start until the engine logged "running"
    rss_started_mb: float = 0.0
    wall_s: float = float("nan")
    p50_s: float = float("nan")
    first_request_s: float = float("nan")  # cron instant -> first request at the sandbox
    got: int = 0
    peak_rss_mb: float = 0.0
    threads: int = 0
    cpu_cycle_s: float = 0.0
    cpu_main_s: float = 0.0  # the engine's event-loop thread alone, read cycle
    cpu_bench_s: float = 0.0  # this process (sandbox, subscriber) during the read cycle
    cpu_total_s: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step -> (median, max) s after the cron
    alerts: int = 0
    mqtt_connected: int = 0  # "connected to" lines in the engine's log
    idle_wakeups: float = float("nan")  # context switches per minute after the read (--idle-window)
    log_tail: str = ""


def thread_cpu(pid: int, tid: int) -> float:
    """utime + stime of one thread, in seconds."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kb_mb(value: str) -> float:
    return int(value.split()[0]) / 1024


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``text`` appears in the log file (the engine logs "running ..." once started)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"meterflow exited with {proc.returncode}:\n{path.read_text()[-3000:]}")
        if text in path.read_text(errors="replace"):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"meterflow did not start within {timeout:.0f} s:\n{path.read_text()[-3000:]}")


def run_once(args, work: Path, rep: int, sandbox: SmtSandbox, mqtt_port: int | None, names: list[str],
             env_base: dict[str, str], margin: float, probe: bool = False) -> Run:
    """Start the engine with a cron ``margin`` s after it is expected up, measure one read cycle."""
    prefix = f"scale-{os.getpid()}-r{rep}"
    d = work / f"run{rep}"
    d.mkdir()
    lines = []
    for name in names:
        lines += [f"{name}:", f"  SMT_CREDENTIAL: smt-{name}", f"  SMT_TOPIC_PREFIX: {prefix}/{name}",
                  f"  SMT_STATE_DIR: {d / 'state' / name}"]
    (d / "meters.yaml").write_text("\n".join(lines) + "\n")

    launched = time.time()
    fire = int(launched + margin) + 1  # a whole second: the cron's resolution
    at = datetime.fromtimestamp(fire, UTC)
    env = dict(env_base, SMT_CRON=f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *", SMT_TZ="UTC")
    log = d / "meterflow.log"
    sub = Readings(mqtt_port, prefix) if mqtt_port else None
    if sub:
        sub.expect = len(names)
    before = len(sandbox.requests)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from meterflow.cli import main; sys.exit(main(sys.argv[1:]))",
             "run", str(FLOW), "--instances", str(d / "meters.yaml"), "--no-control"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=d)
    r = Run(len(names))
    spy = None
    try:
        r.startup_s = wait_for_log(log, "running ", proc, timeout=max(120.0, margin + 60))
        r.rss_started_mb = kb_mb(proc_status(proc.pid)["VmRSS"])
        if probe:
            return r
        if time.time() > fire - 0.2:
            raise RuntimeError(f"the engine took {r.startup_s:.1f} s to start, past the cron instant"
                               f" ({margin:.1f} s after launch): raise --start-margin")
        if args.py_spy:
            fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(args.py_spy).suffix, "raw")
            spy = subprocess.Popen(["py-spy", "record", "-o", args.py_spy, "-f", fmt, "-r", "200", "--nonblocking",
                                    "--pid", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, fire - time.time() - 0.05))
        cpu0, main0, bench0 = cpu_seconds(proc.pid), thread_cpu(proc.pid, proc.pid), cpu_seconds("self")
        budget = args.timeout if args.timeout else args.wait * (1 + PENDING_POLLS) + 120 + len(names) * 0.1
        if sub:
            sub.all_in.wait(max(0.0, fire + budget - time.time()))
            with sub.lock:
                times = sorted(sub.first.values())
                r.alerts = len(sub.alerts)
            r.got = len(times)
            if times:
                r.wall_s = times[-1] - fire
                r.p50_s = statistics.median(times) - fire
        else:  # no broker: the last status answer the sandbox sent stands for the reading
            want = len(names) * ROUND_TRIPS
            deadline = fire + budget
            while len(sandbox.requests) - before < want and time.time() < deadline:
                time.sleep(0.01)
            reqs = sandbox.requests[before:]
            r.got = sum(1 for q in reqs if q.path.rstrip("/").endswith("odrstatus")) // (1 + PENDING_POLLS)
            if reqs:
                r.wall_s = reqs[-1].at - fire
        st = proc_status(proc.pid)
        r.peak_rss_mb, r.threads = kb_mb(st["VmHWM"]), int(st["Threads"])
        cpu1 = cpu_seconds(proc.pid)
        r.cpu_cycle_s, r.cpu_total_s = cpu1 - cpu0, cpu1
        r.cpu_main_s = thread_cpu(proc.pid, proc.pid) - main0
        r.cpu_bench_s = cpu_seconds("self") - bench0
        reqs = sandbox.requests[before:]
        if reqs:
            r.first_request_s = reqs[0].at - fire
        for q in reqs:
            ep = q.path.rstrip("/").rsplit("/", 1)[-1]
            r.requests[ep] = r.requests.get(ep, 0) + 1
        r.steps = step_times(reqs, fire, sub.first if sub else {}, )
        if args.idle_window:
            # The same count as bench/nodered's idle figure: every thread, voluntary and not.
            time.sleep(IDLE_SETTLE_S)
            c0 = context_switches(proc.pid)
            time.sleep(args.idle_window)
            r.idle_wakeups = (context_switches(proc.pid) - c0) * 60 / args.idle_window
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sub:
            sub.close()
    text = log.read_text(errors="replace")
    r.mqtt_connected = text.count("] connected to ")
    r.log_tail = "\n".join(line for line in text.splitlines()
                           if " ERROR " in line or " WARNING " in line)[-2000:]
    return r


IDLE_SETTLE_S = 45  # after the reads: context flushes, keep-alive connections closed (15-30 s)

STEPS = ("token", "odr") + tuple(f"poll {i}" for i in range(1, PENDING_POLLS + 2)) + ("reading",)


def step_times(reqs, fire: float, readings: dict[str, float]) -> dict[str, tuple[float, float]]:
    """When each step of a meter's path reached the sandbox (its request head was read, before
    the added latency) or the subscriber, as (median, max) seconds after the cron instant."""
    per_meter: dict[str, list[float]] = {}
    for q in reqs:
        user = (q.json or {}).get("username") or (q.json or {}).get("requestorID")
        if isinstance(user, str) and user.startswith("user-"):
            per_meter.setdefault(user[5:], []).append(q.at - fire)
    for meter, at in readings.items():
        per_meter.setdefault(meter, []).append(at - fire)
    out = {}
    for i, step in enumerate(STEPS):
        times = [t[i] for t in per_meter.values() if len(t) > i]
        if times:
            out[step] = (statistics.median(times), max(times))
    return out


def ideal_steps(wait: float, latency: float) -> dict[str, float]:
    """The same instants for one meter alone on an infinitely fast machine."""
    out, t = {}, 0.0
    for i, step in enumerate(STEPS):
        out[step] = t
        t += latency + (wait if i >= 1 else 0.0)  # after the ODR and every PEN answer: one wait
    out["reading"] = out[STEPS[-2]] + latency
    return out


# ---- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meters", type=int, default=1000, help="instances in the one process (default 1000)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="added to every sandbox request (default 50)")
    p.add_argument("--wait", type=float, default=1.0, help="the flow's poll waits in s (default 1)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, each a fresh process (default 3)")
    p.add_argument("--quick", action="store_true", help="100 meters, one repetition")
    p.add_argument("--start-margin", type=float, default=None,
                   help="s from launch to the cron instant (default: measured start-up x 1.5 + 3)")
    p.add_argument("--one-by-one", type=int, default=25,
                   help="meters whose credentials go through CredentialStore.set, to time it (default 25)")
    p.add_argument("--idle-window", type=float, default=0, metavar="S",
                   help="after the reads, count the engine's wake-ups over S seconds (default: off)")
    p.add_argument("--py-spy", metavar="FILE", help="record a py-spy flame graph of the engine (last repetition)")
    p.add_argument("--timeout", type=float, default=None,
                   help="s after the cron instant to wait for the readings (default 120 + 0.1 per meter)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.quick:
        args.meters, args.reps = 100, 1
    n = args.meters
    # Every meter holds an HTTPS and an MQTT connection (and so does the sandbox's side).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * n + 1024)) if hard != resource.RLIM_INFINITY else max(soft, 4 * n + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    work = Path(tempfile.mkdtemp(prefix="meterflow-scale-"))
    names = meter_names(n)
    creds = {f"smt-{name}": meter_secrets(name, i) for i, name in enumerate(names, 1)}
    store_info = write_store(work / "credentials.json", work / "credentials.key", creds, min(args.one_by_one, n))

    users = {c["username"]: c["password"] for c in creds.values()}
    sandbox = SmtSandbox(mode="token", state_dir=work / "sandbox", users=users, pending_polls=PENDING_POLLS,
                         latency_ms=args.latency_ms, rate_limit_per_hour=10**9, rate_limit_per_day=10**9,
                         request_timeout=120.0)
    sandbox.start()
    # SmtSandbox listens with a backlog of 64; 1,000 clients connecting at one instant would
    # overflow it and wait for SYN retransmits (1 s, 3 s).  Linux takes a new backlog on a
    # second listen().
    sandbox._listener.listen(4096)

    mosquitto = None
    binary = _binary("/usr/sbin/mosquitto", "mosquitto")
    if binary is None:
        print("NOTE: mosquitto is not installed (apt-get install mosquitto): MQTT is skipped; the end of a"
              " meter's cycle is its last status answer at the sandbox, and the flow's publishes fail quietly.")
    else:
        mosquitto = Mosquitto(binary, work / "mosquitto")
        conf = mosquitto.argv[-1]
        Path(conf).write_text(Path(conf).read_text() + "max_connections -1\n")
        mosquitto.start()
    mqtt_port = mosquitto.port if mosquitto else None

    env_base = {k: v for k, v in os.environ.items() if not k.startswith(("SMT_", "MQTT_", "METERFLOW_"))}
    env_base.update({
        "METERFLOW_CREDENTIALS": str(work / "credentials.json"),
        "METERFLOW_KEY_FILE": str(work / "credentials.key"),
        "METERFLOW_RUNTIME_DIR": str(work / "runtime"),
        "SMT_URL": sandbox.url,
        "SMT_CA": sandbox.ca_path,
        "SMT_FIRST_POLL_DELAY": f"{args.wait:g}",
        "SMT_PENDING_DELAY": f"{args.wait:g}",
        "MQTT_PORT": str(mqtt_port or 9),
        "HA_DISABLED": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    })

    critical = args.wait * (1 + PENDING_POLLS) + ROUND_TRIPS * args.latency_ms / 1000
    print(f"{n} meters, one process; sandbox +{args.latency_ms:g} ms per request; waits {args.wait:g} s;"
          f" critical path {critical:.3f} s = {args.wait:g} s first poll + {PENDING_POLLS} x {args.wait:g} s PEN"
          f" + {ROUND_TRIPS} round trips x {args.latency_ms:g} ms")
    print(f"credentials: CredentialStore.set {store_info['set_small_ms']:.1f} ms per field on a small store"
          f" ({store_info['timed_sets']} sets), {store_info['set_full_ms']:.1f} ms on the full one: {n * len(FIELDS)}"
          f" sets one by one ~ {store_info['one_by_one_s']:.0f} s; written here in one go"
          f" ({store_info['bulk_meters']} meters): {store_info['bulk_s']:.2f} s; store {store_info['store_kb']:.0f} KB")

    runs: list[Run] = []
    margin = args.start_margin
    py_spy = args.py_spy
    try:
        if margin is None:  # a first start measures how long the engine takes to come up
            args.py_spy = None
            probe = run_once(args, work, 0, sandbox, mqtt_port, names, env_base, margin=10**6, probe=True)
            margin = probe.startup_s * 1.5 + 3
            print(f"  start-up probe: {probe.startup_s:.2f} s, RSS {probe.rss_started_mb:.1f} MB once running")
        for rep in range(1, args.reps + 1):
            args.py_spy = py_spy if rep == args.reps else None
            r = run_once(args, work, rep, sandbox, mqtt_port, names, env_base, margin)
            runs.append(r)
            print(f"  rep {rep}: {r.got}/{n} readings, wall {r.wall_s:.3f} s (median meter {r.p50_s:.3f} s), peak RSS"
                  f" {r.peak_rss_mb:.1f} MB, CPU {r.cpu_cycle_s:.2f} s, start-up {r.startup_s:.2f} s,"
                  f" requests {r.requests}" + (f", {r.alerts} alerts" if r.alerts else ""))
            if r.log_tail:
                print("    engine warnings/errors (tail):\n      " + r.log_tail.replace("\n", "\n      "))
    finally:
        sandbox.stop()
        if mosquitto:
            mosquitto.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def med(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    wall = med("wall_s")
    rows = [
        ["meters (instances in one process)", n, ""],
        ["readings received (median)", f"{med('got'):.0f}", f"{n}"],
        ["MQTT connections the engine logged", f"{med('mqtt_connected'):.0f}", f"{n}"],
        ["critical path (s)", f"{critical:.3f}", ""],
        ["wall, cron instant -> last reading (s)", f"{wall:.3f}", ""],
        ["wall / critical path", f"{wall / critical:.2f}", "<= 1.2"],
        ["median meter done after (s)", f"{med('p50_s'):.3f}", ""],
        ["cron instant -> first request at SMT (s)", f"{med('first_request_s'):.3f}", ""],
        ["peak RSS of meterflow (MB)", f"{med('peak_rss_mb'):.1f}", "<= 150"],
        ["RSS once started (MB)", f"{med('rss_started_mb'):.1f}", ""],
        ["start-up, launch -> running (s)", f"{med('startup_s'):.2f}", ""],
        ["CPU of the read cycle (s, utime+stime)", f"{med('cpu_cycle_s'):.2f}", ""],
        ["  of which the event-loop thread (s)", f"{med('cpu_main_s'):.2f}", ""],
        ["CPU of the whole run (s)", f"{med('cpu_total_s'):.2f}", ""],
        ["CPU of sandbox + subscriber, read cycle (s)", f"{med('cpu_bench_s'):.2f}", ""],
        ["threads in meterflow", f"{med('threads'):.0f}", ""],
    ]
    if args.idle_window:
        rows.append(["wake-ups/min once idle (context switches, all threads)", f"{med('idle_wakeups'):.0f}", ""])
    print()
    print(f"median of {len(runs)} run(s); MQTT {'on' if mqtt_port else 'SKIPPED (no mosquitto)'};"
          f" machine: {json.dumps(machine())}")
    print(table(rows, ["figure", "value", "target"]))
    ideal = ideal_steps(args.wait, args.latency_ms / 1000)
    steps = [[step, f"{ideal[step]:.3f}",
              f"{statistics.median(r.steps[step][0] for r in runs if step in r.steps):.3f}",
              f"{statistics.median(r.steps[step][1] for r in runs if step in r.steps):.3f}"]
             for step in STEPS if any(step in r.steps for r in runs)]
    print()
    print("one meter's path, s after the cron instant (requests: when the sandbox read the request head)")
    print(table(steps, ["step", "alone, ideal", "median meter", "last meter"]))
    if any(r.got < n for r in runs):
        print("\nNOTE: not every meter published a reading (see 'readings received'); where MQTT connections"
              " are missing too, the engine could not connect every broker (run with --keep and read run*/meterflow.log).")
    return 0 if runs and all(r.got == n for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
