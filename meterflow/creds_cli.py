"""``meterflow creds``: manage the encrypted credential store (see :mod:`meterflow.credentials`).

::

    meterflow creds set smt password                 # prompts, without echo
    meterflow creds set smt password --from-env SMT_PASSWORD
    meterflow creds set smt client_key --value-file key.txt   # one trailing newline is dropped
    meterflow creds get smt password                 # masked; --show prints the value
    meterflow creds list                             # names and fields, never values
    meterflow creds delete smt password              # one field; without FIELD the whole credential

Flows then refer to ``${creds:smt.password}``.  ``--store`` (or ``METERFLOW_CREDENTIALS``)
picks the store file; the key comes from ``METERFLOW_KEY`` or the key file beside the store.
Exit codes: 0 ok, 1 a problem (printed as one line on stderr), 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

MASKED = "********"  # fixed width: the length of a secret is not shown either


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``creds`` with its sub-commands to an argparse sub-parsers object."""
    p = subparsers.add_parser("creds", help="manage the encrypted credential store (${creds:NAME.FIELD})",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--store", metavar="FILE",
                   help="credential store file (default: $METERFLOW_CREDENTIALS or ~/.config/meterflow/credentials.json)")
    sub = p.add_subparsers(dest="creds_command", metavar="{set,get,list,delete}")
    sub.required = True

    s = sub.add_parser("set", help="store a secret value (prompts without echo)")
    s.add_argument("name", help="credential name, e.g. smt")
    s.add_argument("field", help="field name, e.g. password")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--from-env", metavar="VAR", help="take the value from this environment variable")
    src.add_argument("--value-file", metavar="FILE", help="take the value from this file ('-': stdin); one trailing newline is dropped")

    g = sub.add_parser("get", help="show a credential's fields (masked unless --show)")
    g.add_argument("name")
    g.add_argument("field", nargs="?")
    g.add_argument("--show", action="store_true", help="print the secret value itself")

    ls = sub.add_parser("list", help="list credential names and their fields (never values)")
    ls.add_argument("name", nargs="?", help="only this credential")

    d = sub.add_parser("delete", help="delete one field, or the whole credential")
    d.add_argument("name")
    d.add_argument("field", nargs="?")

    p.set_defaults(func=run)
    return p


def _fail(text: str) -> int:
    print(f"meterflow creds: error: {text}", file=sys.stderr)
    return 1


def _read_value(args) -> str:
    from .errors import CredentialsError

    if args.from_env:
        value = os.environ.get(args.from_env)
        if value is None:
            raise CredentialsError(f"environment variable {args.from_env} is not set")
        return value
    if args.value_file:
        try:
            if args.value_file == "-":
                value = sys.stdin.read()
            else:
                with open(args.value_file, encoding="utf-8") as f:
                    value = f.read()
        except OSError as e:
            raise CredentialsError(f"cannot read {args.value_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CredentialsError(f"{args.value_file} is not UTF-8 text") from None
        for end in ("\r\n", "\n"):
            if value.endswith(end):
                return value[: -len(end)]
        return value
    import getpass

    value = getpass.getpass(f"Value for {args.name}.{args.field}: ")
    if value and sys.stdin.isatty():
        if getpass.getpass("Again: ") != value:
            raise CredentialsError("the two values differ; nothing stored")
    return value


def run(args) -> int:
    from .credentials import CredentialStore, check_name
    from .errors import CredentialsError

    try:
        store = CredentialStore(args.store)
        cmd = args.creds_command
        if cmd == "set":
            value = _read_value(args)
            if not value:
                return _fail("an empty value is not stored")
            store.set(args.name, args.field, value)
            print(f"stored {args.name}.{args.field} in {store.path}; use it as ${{creds:{args.name}.{args.field}}}",
                  file=sys.stderr)
        elif cmd == "get":
            check_name("credential name", args.name)
            if args.field:
                value = store.get(args.name, check_name("field name", args.field))
                print(value if args.show else MASKED)
            else:
                for field, value in sorted(store.fields(args.name).items()):
                    print(f"{field}: {value if args.show else MASKED}")
        elif cmd == "list":
            names = store.names()
            if args.name:
                if args.name not in names:
                    return _fail(f"no credential {args.name!r} in {store.path}")
                names = {args.name: names[args.name]}
            if not names:
                print(f"no credentials in {store.path}", file=sys.stderr)
            for name, fields in names.items():
                print(f"{name}: {', '.join(fields)}")
        elif cmd == "delete":
            store.delete(args.name, args.field)
            what = f"{args.name}.{args.field}" if args.field else f"credential {args.name}"
            print(f"deleted {what} from {store.path}", file=sys.stderr)
        return 0
    except CredentialsError as e:
        return _fail(str(e))
    except OSError as e:  # e.g. the store's directory is not writable
        where = f" ({e.filename})" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}")
    except (KeyboardInterrupt, EOFError):
        print(file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterflow")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
