"""``meterflow demo smt``: the SMT flow against the local sandbox, no account needed.

It starts the SMT sandbox (HTTPS with its own CA, client certificates required), issues a
"current" and a "previous" client certificate, writes the sandbox's user, password, ESIID
and meter number into a demo credential store, starts a local Mosquitto broker when one
is installed, and runs ``flows/smt.yaml`` with a fast schedule so readings arrive within
a minute.  Everything lives in one demo directory and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("meterflow.demo")
REPO_FLOWS = Path(__file__).resolve().parent.parent / "flows"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run a flow against a local sandbox (no account needed)")
    p.add_argument("name", choices=("smt",), help="which demo")
    p.add_argument("--dir", default=None, help="demo state directory (default: a new temporary one)")
    p.add_argument("--flow", default=None, help="flow file (default: flows/smt.yaml of this checkout)")
    p.add_argument("--every", default="20", help="seconds between reads (default 20)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--log-format", choices=("pretty", "json"), default="pretty")
    p.set_defaults(func=cmd_demo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(directory: Path) -> tuple[subprocess.Popen | None, int]:
    """A private broker on a free loopback port, or (None, port) when mosquitto is not installed."""
    port = _free_port()
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        return None, port
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def cmd_demo(args) -> int:
    from . import logs

    logs.setup("info", args.log_format)
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="meterflow-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    flow = Path(args.flow) if args.flow else REPO_FLOWS / "smt.yaml"
    if not flow.exists():
        log.error("flow file %s not found (run from a meterflow checkout, or pass --flow)", flow)
        return 1
    return asyncio.run(_run(directory, flow, args))


async def _run(directory: Path, flow: Path, args) -> int:
    from .credentials import CredentialStore
    from .flowfile import load_flow
    from .runner import run
    from .sandbox.smt import SmtSandbox

    sandbox = SmtSandbox(state_dir=directory / "sandbox", mode="cert", pending_polls=2,
                         rate_limit_per_hour=3600, rate_limit_per_day=100000)
    sandbox.start()
    current = sandbox.issue_client_cert("current", register=True)
    previous = sandbox.issue_client_cert("previous", register=True)
    user, password = next(iter(sandbox.users.items()))
    env = {
        "METERFLOW_CREDENTIALS": str(directory / "credentials.json"),
        "METERFLOW_KEY_FILE": str(directory / "credentials.key"),
    }
    os.environ.update(env)
    store = CredentialStore()
    for field, value in (("username", user), ("password", password), ("esiid", "10443720000000001"),
                         ("meter", "123456789LG")):
        store.set("smt", field, value)
    broker, mqtt_port = start_mosquitto(directory)
    os.environ.update({
        "SMT_URL": sandbox.url, "SMT_CA": str(sandbox.ca_path),
        "SMT_CERT": str(current[0]), "SMT_KEY": str(current[1]),
        "SMT_PREVIOUS_CERT": str(previous[0]), "SMT_PREVIOUS_KEY": str(previous[1]),
        "SMT_CRON": f"*/{int(args.every)} * * * * *", "SMT_FIRST_POLL_DELAY": "2s", "SMT_PENDING_DELAY": "2s",
        "SMT_STATE_DIR": str(directory / "state"), "SMT_SPOOL_DIR": str(directory / "spool"),
        "MQTT_PORT": str(mqtt_port),
    })
    log.info("demo directory %s; SMT sandbox %s; MQTT %s", directory, sandbox.url,
             f"127.0.0.1:{mqtt_port}" if broker else "none (mosquitto not installed: readings are queued)")
    log.info("readings appear below as [debug:reading] lines and on MQTT topic smt/reading; Ctrl-C stops")
    spec = load_flow(str(flow))
    for problem in spec.problems:
        print(problem)
    if spec.errors:
        return 1
    try:
        if args.duration:
            asyncio.get_running_loop().call_later(args.duration, os.kill, os.getpid(), 15)
        return await run([spec])
    finally:
        sandbox.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(5)
