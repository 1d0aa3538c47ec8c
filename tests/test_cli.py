"""The ``meterflow`` command line: check, nodes, graph, run, inject.

Most commands run in-process through ``meterflow.cli.main`` (fast); ``run`` and
``inject`` run as real processes, because signals and the control socket are the point.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from meterflow.cli import main
from meterflow.plugins import registry

ROOT = Path(__file__).resolve().parent.parent
HAS_INJECT = "inject" in registry().types

VALID = """\
meterflow: 1
name: cli-test
nodes:
  - id: fmt
    type: change
    rules:
      - set: topic
        to: smt/reading
    wires: [call]
  - id: call
    type: link-call
    links: [entry]
    wires: [show]
  - id: entry
    type: link-in
    wires: [back]
  - id: back
    type: link-out
    mode: return
  - id: show
    type: debug
  - id: oops
    type: catch
    scope: [fmt, call]
    kinds: [parse, timeout]
    wires: [show]
  - id: everything
    type: catch
    wires: [show]
"""

INVALID = """\
meterflow: 1
nodes:
  - id: fmt
    type: change
    rules: [{delete: topic}]
    wires: [shwo]
  - id: show
    type: debug
    levle: info
"""


@pytest.fixture
def files(tmp_path):
    def make(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return make


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: usage errors and --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---- check ------------------------------------------------------------------------------------
def test_check_valid_flow_exits_0(capsys, files):
    code, out, err = cli(capsys, "check", files("ok.yaml", VALID))
    assert code == 0 and out == ""
    assert err.strip() == "ok: 1 file(s), 7 node(s), 0 warning(s)"


def test_check_quiet_prints_nothing_when_valid(capsys, files):
    assert cli(capsys, "check", "-q", files("ok.yaml", VALID)) == (0, "", "")


def test_check_invalid_flow_exits_1_with_every_problem(capsys, files):
    path = files("bad.yaml", INVALID)
    code, out, err = cli(capsys, "check", path)
    assert code == 1
    assert out.splitlines() == [
        f"{path}:6:13: error: wire to unknown node 'shwo' (did you mean 'show'?)",
        f"{path}:9:5: error: unknown field 'levle' (did you mean 'level'?)",
    ]
    assert err.strip() == "2 error(s), 0 warning(s) in 1 file(s)"


def test_check_several_files_reports_each_and_fails_if_any_fails(capsys, files):
    good, bad = files("ok.yaml", VALID), files("bad.yaml", INVALID)
    code, out, err = cli(capsys, "check", good, bad)
    assert code == 1
    assert all(line.startswith(bad + ":") for line in out.splitlines())
    assert "in 2 file(s)" in err


def test_check_missing_file_exits_1(capsys, tmp_path):
    code, out, _ = cli(capsys, "check", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert out.strip() == f"{tmp_path / 'nope.yaml'}:1:1: error: cannot read flow file: No such file or directory"


@pytest.mark.parametrize("argv", [["check"], ["check", "--nosuch", "x.yaml"], [], ["nosuch-command"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and "usage: meterflow" in err


def test_check_as_a_process_exit_codes(files):
    """The real entry point, as scripts and CI call it."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "meterflow.cli", *args], capture_output=True, text=True,
                              timeout=30, cwd=ROOT)

    assert run("check", files("ok.yaml", VALID)).returncode == 0
    bad = run("check", files("bad.yaml", INVALID))
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    assert run("check").returncode == 2


SECRET_FLOW = """\
meterflow: 1
nodes:
  - id: login
    type: change
    rules: [{set: password, to: "${creds:smt.password}"}]
"""


@pytest.mark.skipif("creds" not in registry().substitutions, reason="the credential store is not installed")
def test_missing_secret_warns_in_check_fails_with_strict_and_stops_run(capsys, files, monkeypatch, tmp_path):
    store = str(tmp_path / "creds.json")  # empty: the flow is fine, this machine is not set up yet
    monkeypatch.setenv("METERFLOW_CREDENTIALS", store)
    path = files("secret.yaml", SECRET_FLOW)
    code, out, err = cli(capsys, "check", path)
    assert code == 0 and out.startswith(f"{path}:5:33: warning: no credential 'smt'")
    assert err.strip() == "ok: 1 file(s), 1 node(s), 1 warning(s)"
    code, out, _ = cli(capsys, "check", "--strict", path)
    assert code == 1 and "warning: no credential 'smt'" in out
    proc = subprocess.run([sys.executable, "-m", "meterflow.cli", "run", path], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env={**os.environ, "METERFLOW_CREDENTIALS": store,
                                                     "METERFLOW_RUNTIME_DIR": str(tmp_path / "rt")})
    assert proc.returncode == 1 and f"{path}:5:33: error: no credential 'smt'" in proc.stderr


# ---- nodes ------------------------------------------------------------------------------------
def test_nodes_lists_every_type_with_its_plugin(capsys):
    code, out, _ = cli(capsys, "nodes")
    assert code == 0
    lines = out.splitlines()
    reg = registry()
    assert len(lines) == len(reg.types)
    for name in reg.types:
        [line] = [x for x in lines if x.split()[0] == name]
        assert line.endswith(f"[{reg.plugin_label(name)}]") and reg.types[name].summary in line
    change = next(x for x in lines if x.startswith("change "))
    assert change.endswith("[meterflow.nodes (built-in)]")


def test_nodes_type_shows_the_schema(capsys):
    code, out, _ = cli(capsys, "nodes", "change")
    assert code == 0
    lines = out.splitlines()
    assert lines[:4] == [
        "change — Set, change, delete or move message, flow and global properties",
        "plugin: meterflow.nodes (built-in)",
        "outputs: 1",
        "fields:",
    ]
    assert "  rules: list of map; required — rules applied in order" in lines
    assert any(line.startswith("    to_type: str; one of 'str', 'num',") for line in lines)
    assert "Rules, applied in order::" in out  # the module docstring with its YAML example


def test_nodes_unknown_type_exits_1_with_did_you_mean(capsys):
    assert cli(capsys, "nodes", "nosuch") == (1, "", "meterflow: unknown node type 'nosuch'\n")
    code, _, err = cli(capsys, "nodes", "chnage")
    assert code == 1 and err == "meterflow: unknown node type 'chnage' (did you mean 'change'?)\n"


# ---- graph ------------------------------------------------------------------------------------
def test_graph_mermaid_has_wires_links_and_catch_edges(capsys, files):
    code, out, _ = cli(capsys, "graph", files("ok.yaml", VALID))
    assert code == 0
    lines = [x.strip() for x in out.splitlines()]
    assert lines[0] == "flowchart LR"
    assert 'n_fmt["fmt<br/>change"]' in lines
    assert 'n_oops{{"oops<br/>catch"}}' in lines
    assert "n_fmt --> n_call" in lines  # wire
    assert "n_call -.->|call| n_entry" in lines  # link call
    assert "n_fmt -..->|parse,timeout| n_oops" in lines and "n_call -..->|parse,timeout| n_oops" in lines  # catch
    assert "%% everything watches every node of the flow" in lines


def test_graph_dot(capsys, files):
    code, out, _ = cli(capsys, "graph", "--format", "dot", files("ok.yaml", VALID))
    assert code == 0
    assert out.startswith('digraph "cli-test" {')
    assert out.rstrip().endswith("}")
    assert '"fmt" -> "call" [];' in out
    assert '"call" -> "entry" [label="call" style=dashed];' in out
    assert '"fmt" -> "oops" [label="parse,timeout" style=dotted color=red];' in out
    assert '"oops" [label="oops\\ncatch", shape=hexagon];' in out


def test_graph_of_an_invalid_flow_exits_1(capsys, files):
    code, out, err = cli(capsys, "graph", files("bad.yaml", INVALID))
    assert code == 1 and out == "" and "unknown field 'levle'" in err


# ---- run and inject (real processes) ------------------------------------------------------------
RUN_FLOW = """\
meterflow: 1
name: cli-run-{tag}
nodes:
  - id: kick
    type: inject
    payload: hello from {tag}
    {once}
    wires: [show]
  - id: show
    type: debug
"""


class Running:
    """A ``meterflow run`` process whose stderr is read line by line on a thread."""

    def __init__(self, path: str, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "meterflow.cli", "run", path], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} did not appear; output so far:\n" + "\n".join(self.seen))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run_env(tmp_path) -> dict:
    return {**os.environ, "METERFLOW_RUNTIME_DIR": str(tmp_path / "runtime")}


@pytest.mark.skipif(not HAS_INJECT, reason="the inject node is not installed yet")
def test_run_prints_debug_and_stops_on_sigterm_with_exit_0(files, run_env):
    path = files("run.yaml", RUN_FLOW.format(tag="once", once="once: true"))
    r = Running(path, run_env)
    try:
        line = r.wait_for("[debug:show]")
        assert line.endswith('"hello from once"')
        assert r.stop() == 0
        assert any("stopped" in x for x in r.seen)
        assert not any("Traceback" in x for x in r.seen)
    finally:
        r.kill()


def test_run_of_an_invalid_flow_exits_1_before_starting(files, run_env):
    proc = subprocess.run([sys.executable, "-m", "meterflow.cli", "run", files("bad.yaml", INVALID)],
                          env=run_env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1
    assert "unknown field 'levle'" in proc.stderr and "running" not in proc.stderr


@pytest.mark.skipif(not HAS_INJECT, reason="the inject node is not installed yet")
def test_inject_fires_a_node_of_a_running_flow(files, run_env):
    path = files("run.yaml", RUN_FLOW.format(tag="manual", once=""))
    inject = [sys.executable, "-m", "meterflow.cli", "inject", path]
    r = Running(path, run_env)
    try:
        r.wait_for("running cli-run-manual")
        done = subprocess.run([*inject, "kick"], env=run_env, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert (done.returncode, done.stdout) == (0, "injected kick\n"), done.stderr
        assert r.wait_for("[debug:show]").endswith('"hello from manual"')
        wrong = subprocess.run([*inject, "show"], env=run_env, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert wrong.returncode == 1
        assert wrong.stderr == "meterflow: 'show' is a debug node; only inject nodes can be fired\n"
        missing = subprocess.run([*inject, "nosuch"], env=run_env, capture_output=True, text=True, timeout=30,
                                 cwd=ROOT)
        assert missing.returncode == 1 and "no node 'nosuch'" in missing.stderr
        assert r.stop() == 0
    finally:
        r.kill()
    # the control socket goes away with the engine
    gone = subprocess.run([*inject, "kick"], env=run_env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert gone.returncode == 1 and "no running engine for flow 'cli-run-manual'" in gone.stderr
