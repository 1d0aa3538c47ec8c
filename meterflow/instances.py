"""Many meters, one flow file, one process: ``meterflow run FLOW --instances meters.yaml``.

``meters.yaml`` maps each instance name to the environment it runs with::

    house:
      SMT_CREDENTIAL: smt-house          # its own credentials (meterflow creds set smt-house ...)
      SMT_TOPIC_PREFIX: smt/house        # its own MQTT topics
    barn:
      SMT_CREDENTIAL: smt-barn
      SMT_TOPIC_PREFIX: smt/barn

Each instance is the flow loaded with ``os.environ`` plus its variables (and
``METERFLOW_INSTANCE`` = its name), named ``<flow>@<instance>``, with its own flow and
node context: a file store gets the sub-directory ``<dir>/<instance>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import yamlpos
from .flowfile import FlowSpec, Problem, load_flow

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def load_instances(path: str) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """Instance name -> environment overrides, with every problem found (file:line:col)."""
    problems: list[Problem] = []
    try:
        doc = yamlpos.load(Path(path).read_text(encoding="utf-8"), path)
    except OSError as e:
        return {}, [Problem(path, 1, 1, f"cannot read instances file: {e.strerror or e}")]
    except yamlpos.YamlError as e:
        return {}, [Problem(path, e.line, e.col, e.message)]

    def bad(p: tuple, message: str, key: bool = False) -> None:
        m = doc.mark(p, key=key)
        problems.append(Problem(path, m.line, m.col, message))

    if not isinstance(doc.data, dict) or not doc.data:
        bad((), "an instances file maps each instance name to its environment variables")
        return {}, problems
    out: dict[str, dict[str, str]] = {}
    for name, env in doc.data.items():
        if not isinstance(name, str) or not _NAME.match(name):
            bad((name,), f"instance name {name!r}: use letters, digits, '_', '-' and '.'")
            continue
        if env is None:
            env = {}
        if not isinstance(env, dict):
            bad((name,), f"instance {name!r}: expected a mapping of environment variables")
            continue
        clean = {}
        for key, value in env.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                bad((name, key), f"instance {name!r}: {key!r} is not an environment variable name", key=True)
            elif isinstance(value, dict | list):
                bad((name, key), f"instance {name!r}: {key} must be a single value")
            else:
                clean[key] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        out[name] = clean
    return out, problems


def load_flow_instances(flow_file: str, instances: dict[str, dict[str, str]], *, for_run: bool = True,
                        registry=None) -> list[tuple[str, FlowSpec]]:
    """One validated spec per instance."""
    text = Path(flow_file).read_text(encoding="utf-8")
    out = []
    for name, overrides in instances.items():
        env = {**os.environ, **overrides, "METERFLOW_INSTANCE": name}
        out.append((name, load_flow(flow_file, registry, text=text, env=env, for_run=for_run)))
    return out
