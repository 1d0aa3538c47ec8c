"""The broken-flow corpus: every file in tests/broken/ must give its own message.

Each ``tests/broken/*.yaml`` has one problem (a few have several, to show that every
problem is reported at once).  For each file we run ``meterflow check FILE`` as a
subprocess, exactly as a user would (several files per process, to keep this fast: the
output names the file of every problem), and assert:

* exit code 1 (0 when the file only has warnings),
* no "Traceback" anywhere in stdout or stderr,
* every expected ``file:line:col: error: <fragment>`` line, and no other problem line.

The expectations live in :data:`EXPECTED` below, so a reader sees file, position and
message side by side.  Files under ``tests/broken/included/`` are not flows of their own:
they are included by corpus files.

Most config-node cases use a tiny third-party pack (``corpus-broker`` and ``corpus-tls``
config nodes, a ``corpus-publish`` node that references a broker) that this module writes
into a temporary directory and puts on ``PYTHONPATH``: it is found through the
``meterflow`` entry-point group like any installed plugin.  That keeps the corpus
independent of the built-in nodes' schemas and shows a plugin's config nodes are checked
like built-in ones.  Cases for node types written elsewhere (inject, switch, mqtt-out)
are skipped while the type is not installed.  To check a corpus file by hand, run this
test module, or install an equivalent pack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meterflow.plugins import registry

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "broken"

# file -> expected problems: (line, col, fragment), or (other_file, line, col, fragment)
# when the problem is in an included file.  A fragment starting with "warning: " is a
# warning; every other one an error.  The line must read
# "<file>:<line>:<col>: <severity>: ..." and contain the fragment.
EXPECTED: dict[str, list[tuple]] = {
    # ---- YAML itself ----------------------------------------------------------------
    "yaml-bad-indent.yaml": [(8, 6, "YAML syntax: did not find expected key")],
    "yaml-unclosed-bracket.yaml": [(6, 5, "YAML syntax: did not find expected ',' or ']'")],
    "yaml-tab.yaml": [(4, 1, "YAML syntax: found a tab character that violates indentation")],
    "yaml-duplicate-key.yaml": [(7, 5, "duplicate key 'level' (first defined at line 5)")],
    "yaml-python-tag.yaml": [(5, 15, "unsupported YAML tag")],
    # the composed YAML graph keeps no position for the alias, so the anchor is named
    "yaml-recursive-alias.yaml": [(2, 8, "recursive alias: an anchor cannot contain an alias to itself")],
    "yaml-merge-key-override.yaml": [(7, 12, "field 'level': 'loud' is not one of 'debug', 'info', 'warning'")],
    # ---- the document's shape ----------------------------------------------------------
    "missing-version.yaml": [(1, 1, "missing version header: add 'meterflow: 1' as the first line")],
    "empty-file.yaml": [(1, 1, "missing version header: add 'meterflow: 1'")],
    "wrong-version.yaml": [(1, 12, "unsupported format version 2; this meterflow reads version 1")],
    "version-not-a-number.yaml": [(1, 12, "field 'meterflow': expected an integer, got string '1.0'")],
    "not-a-mapping.yaml": [(1, 1, "a flow file is a mapping with 'meterflow: 1', 'nodes'")],
    "unknown-top-level-key.yaml": [(2, 1, "unknown field 'node' (did you mean 'nodes'?)")],
    "nodes-not-a-list.yaml": [(3, 3, "field 'nodes': expected a list, got a mapping")],
    "node-not-a-mapping.yaml": [(3, 5, "field 'nodes[0]': expected a mapping, got string 'debug'")],
    "context-dir-not-a-string.yaml": [(4, 8, "field 'dir': expected a string, got number 5")],
    "bad-context-flush.yaml": [
        (3, 10, "field 'store': 'files' is not one of 'memory', 'file' (did you mean 'file'?)"),
        (4, 10, "field 'flush': invalid duration 'soon'"),
    ],
    # ---- one node ----------------------------------------------------------------------
    "node-without-id.yaml": [(3, 5, "every node needs an 'id' (a string)")],
    "node-without-type.yaml": [(3, 5, "every node needs a 'type'")],
    "unknown-node-type.yaml": [(4, 11, "unknown node type 'chnage' (did you mean 'change'?) (see `meterflow nodes`)")],
    "unknown-field.yaml": [(5, 5, "unknown field 'propery' (did you mean 'property'?)")],
    "change-rule-unknown-field.yaml": [(8, 9, "unknown field 'sett' (did you mean 'set'?)")],
    "missing-required-field.yaml": [(3, 5, "missing required field 'rules'")],
    "catch-protocol-error-without-scope.yaml": [(3, 5, "missing required field 'scope'")],
    "bool-written-off.yaml": [
        (5, 13, "field 'active': expected true or false, got string 'off' (YAML 1.2: write true or false)")],
    "disabled-written-yes.yaml": [(5, 15, "'disabled' must be true or false, got 'yes'")],
    "number-leading-zero.yaml": [
        (6, 11, "field 'port': expected an integer, got string '01883' (leading zeros are kept as text")],
    "number-written-as-time.yaml": [
        (6, 16, "field 'keepalive': expected a number, got string '12:30' (quote times")],
    "bad-choice.yaml": [(5, 12, "field 'level': 'warn' is not one of 'debug', 'info', 'warning' (did you mean 'warning'?)")],
    "bad-duration.yaml": [(6, 14, "field 'timeout': invalid duration '3 minutes': write seconds (30) or e.g. 10s, 3m")],
    "invalid-property-path.yaml": [(6, 14, "invalid property expression 'payload..reading': empty segment")],
    "invalid-debug-property.yaml": [(5, 15, "field 'property': invalid property expression 'payload.[0': unterminated [")],
    "invalid-regex-change-rule.yaml": [(7, 15, "invalid regular expression: missing ), unterminated subpattern")],
    "invalid-jsonata.yaml": [(7, 13, "Invalid JSONata expression")],
    "invalid-json-value.yaml": [(7, 13, "invalid JSON '{\"reading\": 1,}'")],
    "change-rule-two-actions.yaml": [(6, 9, "each rule has exactly one of set, change, delete, move")],
    "change-rule-without-to.yaml": [(6, 9, "a set rule needs 'to'")],
    # ---- wires ---------------------------------------------------------------------------
    "wire-to-unknown-id.yaml": [(8, 13, "wire to unknown node 'publsh' (did you mean 'publish'?)")],
    "wire-unknown-per-output.yaml": [(8, 15, "wire to unknown node 'archive'")],
    "wire-to-config-node.yaml": [(11, 13, "cannot wire to config node 'broker'")],
    "too-many-outputs.yaml": [(9, 9, "this change node has 1 output(s); wires give 2")],
    "named-output-missing.yaml": [(8, 14, "no output named 'ready'; outputs: 0")],
    "wires-bad-form.yaml": [(7, 12, "wires are a list of node ids, a list per output, or a mapping")],
    "wires-on-output-less-node.yaml": [(5, 12, "a debug node has no outputs")],
    # ---- ids and config nodes ----------------------------------------------------------------
    "duplicate-id.yaml": [(9, 9, "duplicate id 'out' (first used at duplicate-id.yaml:3)")],
    "duplicate-id-across-include.yaml": [
        (4, 9, "duplicate id 'broker' (first used at included/shared-broker.yaml:3)")],
    "config-node-under-nodes.yaml": [(4, 11, "'corpus-broker' is a config node: list it under 'config:'")],
    "node-under-config.yaml": [(4, 11, "'change' is not a config node: list it under 'nodes:'")],
    "config-node-with-wires.yaml": [(6, 12, "config nodes have no wires")],
    "unknown-config-reference.yaml": [
        (3, 9, "warning: config node 'home-broker' is not used by any node"),
        (9, 13, "unknown corpus-broker config node 'home-brokr' (did you mean 'home-broker'?)"),
    ],
    "config-reference-wrong-type.yaml": [(12, 13, "'smt-tls' is a corpus-tls, expected a corpus-broker")],
    "config-node-disabled-but-used.yaml": [(10, 13, "disabled")],
    "unused-config-node.yaml": [(3, 9, "warning: config node 'broker' is not used by any node")],
    # ---- catch, links ------------------------------------------------------------------------
    "catch-unknown-scope.yaml": [(9, 13, "unknown node 'requset' (did you mean 'request'?)")],
    "catch-scope-string.yaml": [(5, 12, "scope is 'all' or a list of node ids, got 'request'")],
    "catch-bad-kind.yaml": [(5, 13, "unknown error kind 'tsl' (did you mean 'tls'?)")],
    "link-out-unknown-link-in.yaml": [(5, 13, "unknown link-in node 'publish-in' (did you mean 'publish-entry'?)")],
    "link-out-to-non-link-node.yaml": [(5, 13, "link-in")],
    "link-call-to-non-link-node.yaml": [(5, 13, "link-in")],
    "link-call-no-target.yaml": [(3, 5, "a static link call names exactly one link-in node")],
    "link-call-two-targets.yaml": [(5, 12, "a static link call names exactly one link-in node")],
    # ---- substitutions ---------------------------------------------------------------------------
    "env-unset.yaml": [(5, 11, "environment variable METERFLOW_CORPUS_UNSET_HOST is not set"
                                " (write ${METERFLOW_CORPUS_UNSET_HOST:-default} for a default)")],
    "env-malformed.yaml": [(5, 11, "invalid reference ${MQTT HOST}: write ${NAME}, ${NAME:-default} or ${scheme:key}")],
    "env-unclosed.yaml": [(5, 11, "${")],
    # ---- includes ------------------------------------------------------------------------------
    "include-missing.yaml": [
        (3, 5, "include 'included/no-such-file.yaml': cannot read flow file: No such file or directory")],
    "include-cycle.yaml": [
        ("included/cycle-b.yaml", 1, 11, "'../include-cycle.yaml' is included more than once (or includes itself)")],
    "include-with-error.yaml": [
        ("included/bad-node.yaml", 4, 12, "field 'level': 'loud' is not one of 'debug', 'info', 'warning'")],
    "include-not-a-list.yaml": [(2, 10, "field 'include': expected a list, got string 'common.yaml'")],
    "include-yaml-error.yaml": [
        (3, 5, "include 'included/bad-yaml.yaml': YAML syntax: did not find expected ',' or ']'")],
    # ---- several problems in one file: all of them, sorted by position ------------------------------
    "many-problems.yaml": [
        (6, 14, "invalid property expression 'payload..x': empty segment"),
        (8, 13, "wire to unknown node 'outt' (did you mean 'out'?)"),
        (11, 12, "field 'level': 'loud' is not one of 'debug', 'info', 'warning'"),
        (12, 13, "field 'active': expected true or false, got string 'no'"),
        (13, 9, "duplicate id 'fmt' (first used at many-problems.yaml:3)"),
        (14, 11, "unknown node type 'swtich'"),
    ],
    # ---- node types written by other modules (skipped while the type is not installed) ---------------
    "inject-bad-cron.yaml": [(5, 11, "cron '0 61 * * *': field 2 of 5 (hour) '61': 61 is out of range 0-23")],
    "inject-cron-wrong-field-count.yaml": [(5, 11, "cron '55 * * *' has 4 field(s); expected 5")],
    "inject-bad-time-zone.yaml": [(6, 9, "unknown time zone 'America/Chicgo'")],
    "inject-bad-repeat.yaml": [(5, 13, "field 'repeat': invalid duration '3 minutes'")],
    "switch-bad-regex.yaml": [(7, 28, "invalid regular expression: missing ), unterminated subpattern")],
    "switch-named-output-missing.yaml": [
        (11, 15, "no output named 'pendng'; outputs: ready, pending (did you mean 'pending'?)")],
    "switch-too-many-outputs.yaml": [(11, 9, "this switch node has 2 output(s); wires give 3")],
    "mqtt-broker-reference-wrong-type.yaml": [(9, 13, "'smt-tls' is a tls-profile, expected a mqtt-broker")],
    "mqtt-out-broker-is-a-list.yaml": [(9, 13, "field 'broker': expected the id of a config node, got a list")],
}

# Cases whose expectation describes what meterflow should say but does not yet (loader
# bugs found while writing the corpus).  strict: the test fails once the bug is fixed,
# so the mark gets removed.
XFAIL: dict[str, str] = {}

CRASHES = {name for name, reason in XFAIL.items() if "traceback" in reason}

# Cases that need node types other engineers provide; skipped until the type exists.
NEEDS = {
    "inject-bad-cron.yaml": ("inject",),
    "inject-cron-wrong-field-count.yaml": ("inject",),
    "inject-bad-time-zone.yaml": ("inject",),
    "inject-bad-repeat.yaml": ("inject",),
    "switch-bad-regex.yaml": ("switch",),
    "switch-named-output-missing.yaml": ("switch",),
    "switch-too-many-outputs.yaml": ("switch",),
    "mqtt-broker-reference-wrong-type.yaml": ("mqtt-out", "tls-profile"),
    "mqtt-out-broker-is-a-list.yaml": ("mqtt-out",),
}

PACK = '''
"""A tiny third-party node pack for the broken-flow corpus (config nodes and a reference)."""
from meterflow.node import Node
from meterflow.plugins import hookimpl
from meterflow.schema import Field


class Broker(Node):
    type = "corpus-broker"
    summary = "corpus test config node: a broker"
    is_config = True
    schema = {"host": Field("str", "host name", required=True), "port": Field("int", "port", default=1883),
              "keepalive": Field("number", "seconds", default=60)}


class Tls(Node):
    type = "corpus-tls"
    summary = "corpus test config node: a TLS profile"
    is_config = True
    schema = {"cert": Field("str", "certificate file")}


class Publish(Node):
    type = "corpus-publish"
    summary = "corpus test node that uses a corpus-broker"
    outputs = 0
    schema = {"broker": Field("ref", "the broker", ref="corpus-broker", required=True),
              "topic": Field("str", "topic")}

    @classmethod
    def output_names(cls, config):
        return []

    @classmethod
    def references(cls, config):
        b = config.get("broker")
        return [(("broker",), b, "corpus-broker")] if isinstance(b, str) else []


@hookimpl
def meterflow_node_types():
    return [Broker, Tls, Publish]
'''


def corpus_files() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.yaml"))


def write_pack(directory: Path) -> Path:
    """Install the corpus pack as an importable distribution with an entry point."""
    (directory / "meterflow_corpus_pack.py").write_text(PACK)
    info = directory / "meterflow_corpus_pack-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meterflow-corpus-pack\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[meterflow]\ncorpus = meterflow_corpus_pack\n")
    return directory


def missing_type(name: str) -> str | None:
    """The first node type this case needs that is not installed, if any."""
    return next((t for t in NEEDS.get(name, ()) if t not in registry().types), None)


@pytest.fixture(scope="module")
def check_env(tmp_path_factory) -> dict:
    pack = write_pack(tmp_path_factory.mktemp("corpus-pack"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERFLOW_CORPUS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(pack), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["METERFLOW_LOAD_PLUGINS"] = "corpus"  # only our pack: an unrelated broken plugin must not interfere
    return env


def run_check(files: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meterflow.cli", "check", *files], cwd=CORPUS, env=env,
                          capture_output=True, text=True, timeout=60)


def only_warnings(name: str) -> bool:
    return all(exp[-1].startswith("warning: ") for exp in EXPECTED[name])


def own_files(name: str) -> set[str]:
    """The files whose problems belong to this case: itself and the included files it names."""
    return {name} | {exp[0] for exp in EXPECTED[name] if len(exp) == 4}


@pytest.fixture(scope="module")
def results(check_env) -> dict[str, subprocess.CompletedProcess]:
    """``meterflow check`` of the corpus: warning-only files alone (their exit code is 0),
    the others in a few batches (one process start per batch keeps this fast), in parallel."""
    files = [f for f in corpus_files() if f in EXPECTED and not missing_type(f)]
    # known crashes run alone too: a traceback would hide the rest of a batch
    alone = [[f] for f in files if only_warnings(f) or f in CRASHES]
    known = [f for f in files if f in XFAIL and [f] not in alone]  # the other known bugs: one batch
    rest = [f for f in files if [f] not in alone and f not in known]
    n = max(2, os.cpu_count() or 2)
    batches = alone + [known] * bool(known) + [rest[i::n] for i in range(n) if rest[i::n]]
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        done = list(pool.map(lambda b: run_check(b, check_env), batches))
    return {f: proc for batch, proc in zip(batches, done, strict=True) for f in batch}


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if ": error: " in line or ": warning: " in line]


def expected_lines(name: str) -> list[tuple[str, str]]:
    """(prefix, fragment) per expected problem."""
    out = []
    for exp in EXPECTED[name]:
        file, (line, col, fragment) = (exp[0], exp[1:]) if len(exp) == 4 else (name, exp)
        severity = "warning" if fragment.startswith("warning: ") else "error"
        fragment = fragment.removeprefix("warning: ")
        out.append((f"{file}:{line}:{col}: {severity}: ", fragment))
    return out


def assert_reported(name: str, output: str) -> None:
    lines = problem_lines(output)
    for prefix, fragment in expected_lines(name):
        assert any(line.startswith(prefix) and fragment in line for line in lines), (
            f"{name}: expected a line starting {prefix!r} containing {fragment!r}; got:\n" + "\n".join(lines))


def _params():
    for name in sorted(EXPECTED):
        marks = [pytest.mark.xfail(reason=XFAIL[name], strict=True)] if name in XFAIL else []
        yield pytest.param(name, marks=marks, id=name.removesuffix(".yaml"))


def test_corpus_and_expectations_match():
    files = corpus_files()
    assert len(files) >= 35
    assert sorted(EXPECTED) == files, "every corpus file needs an expectation, and every expectation a file"
    assert set(XFAIL) <= set(EXPECTED) and set(NEEDS) <= set(EXPECTED)


@pytest.mark.parametrize("name", list(_params()))
def test_broken_flow(name, results):
    needed = missing_type(name)
    if needed:
        pytest.skip(f"node type {needed!r} is not installed yet")
    proc = results[name]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    lines = [line for line in problem_lines(proc.stdout) if line.split(":", 1)[0] in own_files(name)]
    if len([f for f, p in results.items() if p is proc]) == 1:  # checked alone: its own exit code
        assert proc.returncode == (0 if only_warnings(name) else 1), output
        if only_warnings(name):
            assert "ok: 1 file(s)" in proc.stderr
    else:  # checked in a batch: any error makes check exit 1, and this file has one
        assert proc.returncode == 1, output
        assert any(": error: " in line for line in lines), "\n".join(lines)
    assert_reported(name, "\n".join(lines))
    # exactly the expected problems: one mistake must not cascade into noise
    assert len(lines) == len(EXPECTED[name]), "\n".join(lines)


def test_a_batch_reports_every_problem_of_every_file(results):
    """``check`` of many files at once: every file's problems, counted in the summary, exit 1."""
    batches: dict[int, list[str]] = {}
    for name, proc in results.items():
        batches.setdefault(id(proc), []).append(name)
    big = [names for names in batches.values() if len(names) > 1 and not set(names) & set(XFAIL)]
    assert big, "the corpus runs in batches"
    for names in big:
        proc = results[names[0]]
        assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
        errors = sum(1 for n in names for e in EXPECTED[n] if not e[-1].startswith("warning: "))
        warnings = sum(len(EXPECTED[n]) for n in names) - errors
        assert proc.stderr.strip().endswith(f"{errors} error(s), {warnings} warning(s) in {len(names)} file(s)")
        assert len(problem_lines(proc.stdout)) == errors + warnings
