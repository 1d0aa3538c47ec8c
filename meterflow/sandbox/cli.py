"""``meterflow sandbox NAME [ARGS...]``: run a local stand-in for a utility's API.

Built in: ``smt`` (Smart Meter Texas, HTTPS with client certificates and tokens).
A node pack adds its own by putting ``name -> main(argv)`` into the ``sandboxes``
dict of the sandbox parser from its ``meterflow_commands`` hook::

    sandbox = subparsers.choices["sandbox"]
    sandbox.sandboxes["iec"] = meterflow_iec.sandbox.main
"""

from __future__ import annotations

import argparse


def _smt_main(argv: list[str]) -> int:
    from .smt import main

    return main(argv)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sandbox", help="run a local sandbox of a meter API (smt, ...)",
                              description="Run a local sandbox of a meter API on 127.0.0.1. "
                                          "`meterflow sandbox NAME --help` shows its options.")
    p.add_argument("name", metavar="NAME", help="which sandbox (smt, or one a plugin adds)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options for that sandbox")
    p.sandboxes = {"smt": _smt_main}
    p.set_defaults(func=lambda args: _run(p, args))


def _run(parser, args) -> int:
    main = parser.sandboxes.get(args.name)
    if main is None:
        parser.error(f"unknown sandbox {args.name!r}; available: {', '.join(sorted(parser.sandboxes))}")
    return main(args.args) or 0
