"""`meterflow creds set|get|list|delete`, driven in-process through ``add_parser``."""

from __future__ import annotations

import argparse
import os
import stat

import pytest
from cryptography.fernet import Fernet

from meterflow import creds_cli

pytestmark = pytest.mark.usefixtures("private_store")  # tests/conftest.py: never ~/.config


def creds(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meterflow")
    creds_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["creds", *argv])
    return args.func(args)


def test_roundtrip_set_get_list_delete(private_store, monkeypatch, capsys, tmp_path):
    prompts = []

    def fake_getpass(prompt=""):
        prompts.append(prompt)
        return "typed-secret"

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert creds("set", "smt", "password") == 0
    assert prompts[0] == "Value for smt.password: "  # prompted, without echo
    monkeypatch.setenv("SMT_USER", "alice")
    assert creds("set", "smt", "user", "--from-env", "SMT_USER") == 0
    (tmp_path / "pem.txt").write_text("line1\nline2\n")
    assert creds("set", "smt", "cert", "--value-file", str(tmp_path / "pem.txt")) == 0
    err = capsys.readouterr().err
    assert "use it as ${creds:smt.password}" in err and "typed-secret" not in err

    assert creds("get", "smt", "password") == 0
    assert capsys.readouterr().out == "********\n"
    assert creds("get", "smt", "password", "--show") == 0
    assert capsys.readouterr().out == "typed-secret\n"
    assert creds("get", "smt", "cert", "--show") == 0
    assert capsys.readouterr().out == "line1\nline2\n"  # inner newline kept, the final one dropped
    assert creds("get", "smt") == 0
    assert capsys.readouterr().out == "cert: ********\npassword: ********\nuser: ********\n"
    assert creds("list") == 0
    out = capsys.readouterr().out
    assert out == "smt: cert, password, user\n" and "alice" not in out

    assert creds("delete", "smt", "cert") == 0
    assert creds("list") == 0
    assert capsys.readouterr().out == "smt: password, user\n"
    assert creds("delete", "smt") == 0
    assert creds("list") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no credentials in" in captured.err

    for name in ("credentials.json", "credentials.key"):
        assert stat.S_IMODE(os.stat(private_store / name).st_mode) == 0o600


def test_user_errors_are_one_line_with_exit_1(private_store, monkeypatch, capsys):
    monkeypatch.setenv("SMT_PW", "s3cret-value")
    assert creds("set", "smt", "password", "--from-env", "SMT_PW") == 0
    capsys.readouterr()

    def one_line_error(code: int, *text: str) -> None:
        captured = capsys.readouterr()
        assert code == 1
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and captured.err.startswith("meterflow creds: error: ")
        assert "Traceback" not in captured.err
        for t in text:
            assert t in captured.err

    monkeypatch.setenv("METERFLOW_KEY", Fernet.generate_key().decode())
    one_line_error(creds("get", "smt", "password", "--show"), "does not decrypt", "(wrong METERFLOW_KEY?)")
    monkeypatch.delenv("METERFLOW_KEY")
    one_line_error(creds("get", "nope", "password"), "no credential 'nope'")
    one_line_error(creds("get", "smt", "user"), "has no field 'user'")
    one_line_error(creds("set", "smt", "x", "--from-env", "UNSET_VARIABLE_XYZ"), "UNSET_VARIABLE_XYZ is not set")
    one_line_error(creds("set", "smt", "x", "--value-file", "/nonexistent/file"), "cannot read /nonexistent/file")
    one_line_error(creds("delete", "smt", "nofield"), "has no field 'nofield'")
    one_line_error(creds("list", "nope"), "no credential 'nope'")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "")
    one_line_error(creds("set", "smt", "x"), "an empty value is not stored")
    (private_store / "credentials.key").unlink()
    one_line_error(creds("get", "smt", "password"), "holds secrets but there is no key")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        creds("set", "smt")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        creds("set", "smt", "pw", "--from-env", "A", "--value-file", "b")
    assert e.value.code == 2
