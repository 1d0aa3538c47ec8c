"""The ``meterflow`` command: run, check, nodes, graph, inject, creds, sandbox, ...

Heavy modules are imported inside the sub-command that needs them, so ``meterflow run``
starts quickly.  Exit codes: 0 ok, 1 invalid flow or failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys


def _print_problems(problems, stream=None) -> None:
    stream = stream or sys.stderr
    for p in problems:
        print(p, file=stream)


def _load(files: list[str], for_run: bool = True):
    from .flowfile import load_flow

    return [load_flow(f, for_run=for_run) for f in files]


def cmd_check(args) -> int:
    specs = _load(args.files, for_run=False)
    errors = warnings = 0
    for spec in specs:
        _print_problems(spec.problems, sys.stdout)
        errors += len(spec.errors)
        warnings += len(spec.problems) - len(spec.errors)
    if errors or (args.strict and warnings):
        strict = " (--strict: warnings fail)" if args.strict and warnings else ""
        print(f"{errors} error(s), {warnings} warning(s) in {len(specs)} file(s){strict}", file=sys.stderr)
        return 1
    if not args.quiet:
        total = sum(len(s.nodes) for s in specs)
        print(f"ok: {len(specs)} file(s), {total} node(s), {warnings} warning(s)", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from . import logs

    logs.setup(args.log_level, args.log_format)
    if args.instances:
        from .instances import load_flow_instances, load_instances

        if len(args.files) != 1:
            print("meterflow: --instances runs one flow file", file=sys.stderr)
            return 2
        instances, problems = load_instances(args.instances)
        _print_problems(problems)
        if problems:
            return 1
        loaded = load_flow_instances(args.files[0], instances)
    else:
        loaded = [(None, spec) for spec in _load(args.files)]
    bad = False
    for _, spec in loaded:
        _print_problems(spec.problems)
        bad = bad or bool(spec.errors)
    if bad:
        return 1
    import asyncio

    from .runner import run

    return asyncio.run(run(loaded, trace=args.trace, drain_timeout=args.drain_timeout, control=not args.no_control))


def cmd_nodes(args) -> int:
    from .plugins import registry

    reg = registry()
    if args.type:
        cls = reg.types.get(args.type)
        if cls is None:
            from .schema import did_you_mean

            print(f"meterflow: unknown node type {args.type!r}{did_you_mean(args.type, reg.types)}", file=sys.stderr)
            return 1
        print(describe(cls, reg.plugin_label(cls.type)))
        return 0
    width = max(len(t) for t in reg.types)
    for name in sorted(reg.types):
        cls = reg.types[name]
        kind = " (config)" if cls.is_config else ""
        print(f"{name:<{width}}  {cls.summary}{kind}  [{reg.plugin_label(name)}]")
    return 0


def describe(cls, origin: str) -> str:
    lines = [f"{cls.type} — {cls.summary}", f"plugin: {origin}", "config node" if cls.is_config else
             f"outputs: {cls.outputs}" if cls.outputs == 1 else f"outputs: {cls.outputs} (may depend on config)"]
    lines.append("fields:" if cls.schema else "fields: none")
    for name, f in cls.schema.items():
        lines.append(f"  {name}: {f.describe()}")
        for sub_name, sub in (f.fields or (f.item.fields if f.item and f.item.fields else None) or {}).items():
            lines.append(f"    {sub_name}: {sub.describe()}")
    doc = (sys.modules[cls.__module__].__doc__ or "").strip()
    if doc:
        lines += ["", doc]
    return "\n".join(lines)


def cmd_graph(args) -> int:
    from . import graph

    [spec] = _load([args.file], for_run=False)  # drawing needs no secrets or certificates
    if spec.errors:
        _print_problems(spec.errors)
        return 1
    print(graph.dot(spec) if args.format == "dot" else graph.mermaid(spec), end="")
    return 0


def cmd_inject(args) -> int:
    from .control import request, socket_path

    [spec] = _load([args.file])
    if spec.errors:
        _print_problems(spec.errors)
        return 1
    path = socket_path(spec.name)
    try:
        reply = request(path, {"cmd": "inject", "node": args.node, "instance": args.instance})
    except OSError as e:
        print(f"meterflow: no running engine for flow {spec.name!r} at {path} ({e.strerror or e})", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"meterflow: {reply.get('error')}", file=sys.stderr)
        return 1
    print(f"injected {args.node}")
    return 0


def cmd_cert(args) -> int:
    import json

    from .certs import inspect
    from .errors import ConfigError

    try:
        info = inspect(args.file, args.key, within_days=args.days)
    except ConfigError as e:
        print(f"meterflow: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dict(info.as_dict(), problems=info.problems), indent=2))
    else:
        print(f"{info.path}: {info.subject}")
        print(f"  names:       {', '.join(info.names) or '-'}")
        print(f"  not after:   {info.not_after} ({info.seconds_left / 86400:.1f} days left)")
        print(f"  fingerprint: sha256 {info.fingerprint}")
        if info.key_matches is not None:
            print(f"  key:         {'matches' if info.key_matches else 'DOES NOT MATCH'}")
        print(f"  status:      {'; '.join(info.problems) if info.problems else 'ok'}")
    return 1 if info.problems else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="meterflow", description="Run Node-RED-style flows written in YAML.")
    parser.add_argument("--version", action="version", version=f"meterflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="validate and run flows until SIGINT/SIGTERM")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--log-format", choices=("pretty", "json"), default="pretty")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--trace", action="store_true", help="log every hop (node id and a message summary, redacted)")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="at shutdown, how long in-flight messages may take (default 10)")
    p.add_argument("--no-control", action="store_true", help="do not open the local control socket")
    p.add_argument("--instances", metavar="FILE",
                   help="run the flow once per instance in FILE (name -> environment), in this process")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate flow files; print every problem as file:line:col")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--strict", action="store_true",
                   help="warnings (missing secrets or certificate files, unused config nodes) fail too")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("nodes", help="list node types, or show one type's config schema")
    p.add_argument("type", nargs="?")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("graph", help="print the wiring as Mermaid (default) or Graphviz DOT")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("inject", help="fire an inject node of a running flow")
    p.add_argument("file", metavar="FILE")
    p.add_argument("node", metavar="NODE_ID")
    p.add_argument("--instance", help="which instance, when the flow runs with --instances")
    p.set_defaults(func=cmd_inject)

    p = sub.add_parser("cert", help="certificate tools")
    csub = p.add_subparsers(dest="cert_command", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("check", help="expiry, wildcard subject, key match and fingerprint of a PEM certificate")
    c.add_argument("file", metavar="CERT")
    c.add_argument("--key", help="private key that should match")
    c.add_argument("--days", type=float, default=1.0, help="fail when it expires within this many days (default 1)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cert)

    _optional_commands(sub)
    from .plugins import registry

    registry().pm.hook.meterflow_commands(subparsers=sub)
    return parser


def _optional_commands(sub) -> None:
    """Built-in commands that live in their own modules."""
    from importlib import import_module

    for module in ("creds_cli", "sandbox.cli", "nodered.cli", "demo"):
        try:
            mod = import_module(f"meterflow.{module}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("meterflow"):
                continue
            raise
        mod.add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
