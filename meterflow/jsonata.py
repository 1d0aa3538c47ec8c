"""JSONata expressions (change/switch rules, inject props) through jsonata-python.

As in Node-RED, an expression that mentions ``msg`` is evaluated against ``{msg: msg}``,
otherwise against the message itself; ``$flowContext``, ``$globalContext`` and ``$env``
are bound, and ``$millis()`` / ``$now()`` read the engine clock (virtual in tests).  Expressions are compiled once and cached.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any

from .errors import ConfigError, ParseError

_LEGACY = re.compile(r"(^|[^a-zA-Z0-9_'\".])msg([^a-zA-Z0-9_'\"]|$)")


@lru_cache(maxsize=512)
def compile_expr(expr: str):
    try:
        import jsonata
    except ImportError:  # pragma: no cover - declared as a dependency
        raise ConfigError("JSONata needs the jsonata-python package: pip install jsonata-python") from None
    try:
        return jsonata.Jsonata(expr)
    except Exception as e:
        raise ParseError(f"Invalid JSONata expression: {e}") from None


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check(expr: str) -> str | None:
    """A message for an expression that does not compile, else None."""
    try:
        compile_expr(expr)
    except (ParseError, ConfigError) as e:
        return str(e)
    return None


def evaluate(expr: str, msg: dict, node=None) -> Any:
    compiled = compile_expr(expr)
    data = {"msg": msg} if _LEGACY.search(expr) else msg
    if node is not None:
        compiled.register_lambda("flowContext", lambda key, store=None: node.flow_context.get(key))
        compiled.register_lambda("globalContext", lambda key, store=None: node.global_context.get(key))
        # $millis() and $now() follow the engine clock, so flows behave the same on virtual time.
        compiled.register_lambda("millis", lambda: int(node.clock.time() * 1000))
        compiled.register_lambda("now", lambda *_: _iso(node.clock.time()))
    compiled.register_lambda("env", lambda name: os.environ.get(name, ""))
    try:
        result = compiled.evaluate(data)
    except Exception as e:
        raise ParseError(f"Invalid JSONata expression: {e}") from None
    return result
