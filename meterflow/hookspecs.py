"""Every hook a meterflow plugin can implement.

A plugin is a module (or object) with functions named like these, decorated with
``meterflow.hookimpl``, published under the ``meterflow`` entry-point group.  The
built-in nodes are registered through exactly these hooks (``meterflow.nodes``).
``docs/plugins.md`` documents each hook; a test fails if the two drift apart.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("meterflow")


@hookspec
def meterflow_node_types():
    """Return a list of :class:`meterflow.node.Node` subclasses this plugin provides.

    Called once when the plugin manager loads.  Config-node types (brokers, TLS
    profiles) are Node subclasses with ``is_config = True``.
    """


@hookspec
def meterflow_substitutions():
    """Return a dict ``{scheme: resolver}`` for ``${scheme:key}`` references in flow files.

    ``resolver(key: str) -> str`` returns the value or raises
    :class:`meterflow.errors.FlowError` with a message for the user.  Values produced
    this way are treated as secrets: they are redacted wherever meterflow prints.
    """


@hookspec
def meterflow_commands(subparsers):
    """Add sub-commands to the ``meterflow`` CLI.

    ``subparsers`` is the ``argparse`` sub-parsers object; call ``add_parser`` and
    ``set_defaults(func=handler)`` where ``handler(args) -> int`` returns the exit code.
    """
