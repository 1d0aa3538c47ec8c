"""The meterflow-iec plugin: IEC node types, ``meterflow login iec`` and ``meterflow sandbox iec``.

Registered by the entry point ``[project.entry-points.meterflow] iec = "meterflow_iec.plugin"``.
Imports stay light (no httpx here): ``meterflow run`` loads every plugin at start.
"""

from __future__ import annotations

import argparse

from meterflow import hookimpl


@hookimpl
def meterflow_node_types():
    from .nodes import NODE_TYPES

    return NODE_TYPES


def _sandbox_main(argv: list[str]) -> int:
    from .sandbox import main

    return main(argv)


def _subparsers_of(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse has no public accessor for a parser's sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


@hookimpl
def meterflow_commands(subparsers):
    from .login import add_login_parser

    # `meterflow login SERVICE`: another pack may have made `login` already; join it.
    login = subparsers.choices.get("login")
    if login is None:
        login = subparsers.add_parser("login", help="log in to a utility's API once; flows then run unattended",
                                      description="Log in to a utility's API; the tokens go to the "
                                                  "credential store.")
    services = _subparsers_of(login)
    if services is None:
        services = login.add_subparsers(dest="login_service", metavar="SERVICE")
        services.required = True
    if "iec" not in services.choices:
        add_login_parser(services)

    # `meterflow sandbox iec`: the core's sandbox command keeps a name -> main(argv) table.
    sandbox = subparsers.choices.get("sandbox")
    if sandbox is not None and isinstance(getattr(sandbox, "sandboxes", None), dict):
        sandbox.sandboxes["iec"] = _sandbox_main
    elif sandbox is None:  # an older core without `meterflow sandbox`
        p = subparsers.add_parser("sandbox", help="run a local sandbox of a meter API (iec)")
        p.add_argument("name", choices=("iec",))
        p.add_argument("args", nargs=argparse.REMAINDER, help="options for that sandbox")
        p.set_defaults(func=lambda args: _sandbox_main(args.args) or 0)
