"""``meterflow import`` (Node-RED flows.json -> flow YAML) and ``meterflow export`` (back)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="turn a Node-RED flows.json into a meterflow flow file",
                       description="Map every Node-RED node to a meterflow node (unsupported ones are kept as"
                                   " 'unsupported' nodes that `meterflow check` reports); with --credentials the"
                                   " secrets go into meterflow's credential store.")
    p.add_argument("flows", metavar="FLOWS.json")
    p.add_argument("-o", "--output", metavar="FILE.yaml", required=True, help="the flow file to write")
    p.add_argument("--credentials", metavar="flows_cred.json", help="Node-RED's credentials file to import")
    p.add_argument("--secret-env", metavar="VAR",
                   help="environment variable holding Node-RED's credentialSecret (default NODE_RED_CREDENTIAL_SECRET,"
                        " else _credentialSecret from a .config.runtime.json beside the credentials file)")
    p.add_argument("--name", help="flow name (default: the output file's name)")
    p.add_argument("--tab", help="import only this tab (label or id)")
    p.add_argument("--ha-statestream", metavar="BASE_TOPIC",
                   help="map Home Assistant state triggers to mqtt-in on HA's mqtt_statestream topics under BASE_TOPIC")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a meterflow flow file as Node-RED flows.json",
                       description="Write Node-RED JSON the Node-RED editor loads; `meterflow import` brings it back.")
    p.add_argument("file", metavar="FILE.yaml")
    p.add_argument("-o", "--output", metavar="flows.json", required=True, help="where to write ('-' for stdout)")
    p.set_defaults(func=cmd_export)


def _err(text: str) -> int:
    print(f"meterflow: {text}", file=sys.stderr)
    return 1


def cmd_import(args) -> int:
    from ..errors import FlowError
    from . import credentials as nrcreds
    from .importer import FlowsJsonError, import_flows

    out = Path(args.output)
    if out.exists() and not args.force:
        return _err(f"{out} exists (use --force to overwrite)")
    try:
        flows = json.loads(Path(args.flows).read_text(encoding="utf-8"))
    except OSError as e:
        return _err(f"cannot read {args.flows}: {e.strerror or e}")
    except ValueError as e:
        return _err(f"{args.flows} is not JSON: {e}")
    creds = None
    try:
        if args.credentials:
            secret = nrcreds.find_secret(args.credentials, args.secret_env)
            creds = nrcreds.load(args.credentials, secret)
        result = import_flows(flows, name=args.name or out.stem, creds=creds, ha_statestream=args.ha_statestream)
    except (FlowError, FlowsJsonError) as e:
        return _err(str(e))
    if result.secrets:
        from ..credentials import CredentialStore

        store = CredentialStore()
        try:
            store.set_many(result.secrets)
        except FlowError as e:
            return _err(f"cannot store the credentials: {e}")
        names = sorted({n for n, _, _ in result.secrets})
        print(f"stored {len(result.secrets)} secret(s) in {store.path}: {', '.join(names)}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.text, encoding="utf-8")
    nodes = len(result.nodes)
    print(f"wrote {out}: {nodes} node(s), {len(result.unsupported)} unsupported", file=sys.stderr)
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    if result.unsupported:
        print(f"  unsupported (replace or delete them before `meterflow run`): {', '.join(result.unsupported)}",
              file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .exporter import export_flow

    try:
        result = export_flow(args.file)
    except ValueError as e:
        return _err(str(e))
    text = result.json()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {len(result.flows)} Node-RED object(s)", file=sys.stderr)
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    return 0
