"""Node-RED's flows_cred.json: decryption, contrib-credentials values, and import into the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meterflow.cli import main
from meterflow.errors import CredentialsError
from meterflow.nodered import credentials as nrc

# Written by Node.js crypto exactly as Node-RED does it (aes-256-ctr, key sha256("s3cret")).
NODE_VECTOR = {"$": "1ab29ea6dadcf25bdf2f391f6d00cb94gZnkwoJFKeecp2874qMpXU5KyVLngSYAscbG5u8aQ9Qg0yIUVguBeHKfUjMF"
                    "wCHOs8qZmJ9T1AXSCQvt"}

SEED_2023 = Path(__file__).resolve().parent / "data" / "nodered" / "smt-node-red-2023.json"
CREDS_NODE, EMAIL_NODE = "cbada3ec97e2ecbf", "752ce38662105084"


def test_decrypts_what_node_red_wrote():
    assert nrc.decrypt(NODE_VECTOR, "s3cret") == {"abc": {"creds": '[{"value":"alice","type":"str"}]'}}


def test_round_trip_with_a_known_secret():
    creds = {"n1": {"user": "alice", "password": "pä$$"}, "n2": {"creds": "[]"}}
    enc = nrc.encrypt(creds, "my secret", iv=bytes(range(16)))
    assert enc["$"].startswith("000102030405060708090a0b0c0d0e0f")
    assert nrc.decrypt(enc, "my secret") == creds


def test_wrong_secret_is_a_clear_error():
    with pytest.raises(CredentialsError, match="wrong credential secret"):
        nrc.decrypt(NODE_VECTOR, "not it")


def test_missing_secret_and_damaged_file():
    with pytest.raises(CredentialsError, match="NODE_RED_CREDENTIAL_SECRET"):
        nrc.decrypt(NODE_VECTOR, None)
    with pytest.raises(CredentialsError, match="damaged"):
        nrc.decrypt({"$": "zz"}, "s3cret")
    with pytest.raises(CredentialsError, match="not a Node-RED credentials file"):
        nrc.decrypt([1, 2], "s3cret")


def test_plain_credentials_need_no_secret():
    assert nrc.decrypt({"n1": {"user": "a"}}, None) == {"n1": {"user": "a"}}


def test_secret_from_config_runtime_json(tmp_path):
    (tmp_path / ".config.runtime.json").write_text(json.dumps({"_credentialSecret": "ab" * 32}))
    cred = tmp_path / "flows_cred.json"
    assert nrc.find_secret(cred, env={}) == "ab" * 32  # the hex text itself is the secret
    assert nrc.find_secret(cred, env={"NODE_RED_CREDENTIAL_SECRET": "x"}) == "x"
    assert nrc.find_secret(cred, "MY_VAR", env={}) is None  # an explicit variable is not guessed around


def test_contrib_credentials_values_line_up_with_props():
    node = {"id": "c", "props": [{"value": "username", "type": "msg"}, {"value": "password", "type": "msg"},
                                 {"value": "esiid", "type": "msg"}]}
    creds = {"creds": json.dumps([{"value": "alice", "type": "str"}, {"value": "s3cret", "type": "hidden"}])}
    assert nrc.contrib_values(node, creds) == ["alice", "s3cret", None]
    assert nrc.contrib_values(node, None) == [None, None, None]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "store" / "credentials.json"))
    monkeypatch.setenv("METERFLOW_KEY_FILE", str(tmp_path / "store" / "credentials.key"))
    monkeypatch.delenv("METERFLOW_KEY", raising=False)
    from meterflow.credentials import CredentialStore

    return CredentialStore()


def _cred_file(tmp_path: Path, secret: str) -> Path:
    creds = {CREDS_NODE: {"creds": json.dumps([{"value": v, "type": "str"} for v in
                                               ("alice", "s3cret", "10443720001234567", "123456789LG")])},
             EMAIL_NODE: {"userid": "me@example.com", "password": "mail-pw"}}
    path = tmp_path / "flows_cred.json"
    path.write_text(json.dumps(nrc.encrypt(creds, secret)))
    return path


async def test_import_puts_the_secrets_in_the_store_and_the_flow_reads_them(tmp_path, store, monkeypatch):
    cred = _cred_file(tmp_path, "topsecret")
    out = tmp_path / "flows" / "smt.yaml"
    monkeypatch.setenv("NR_SECRET", "topsecret")
    assert main(["import", str(SEED_2023), "--credentials", str(cred), "--secret-env", "NR_SECRET", "-o", str(out)]) == 0
    assert store.fields("smt-credentials") == {"username": "alice", "password": "s3cret",
                                               "esiid": "10443720001234567", "meternumber": "123456789LG"}
    assert store.fields("smt-smtp-email-com") == {"username": "me@example.com", "password": "mail-pw"}
    text = out.read_text()
    assert "s3cret" not in text and "mail-pw" not in text
    assert '"${creds:smt-smtp-email-com.password}"' in text

    # The imported credentials node, run alone, fills the message from the store.
    from meterflow import yamlpos
    from meterflow.testing import Harness

    node = next(n for n in yamlpos.load(text).data["nodes"] if n["type"] == "credentials")
    flow = (f"meterflow: 1\nnodes:\n  - {{id: c, type: credentials, credential: {node['credential']},"
            f" fields: {json.dumps(node['fields'])}, wires: [out]}}\n  - {{id: out, type: junction}}\n")
    async with Harness(text=flow) as h:
        await h.send("c", {"payload": 1})
        [msg] = h.messages("out")
        assert (msg["username"], msg["password"], msg["esiid"], msg["meternumber"]) == (
            "alice", "s3cret", "10443720001234567", "123456789LG")


def test_import_with_the_wrong_secret_fails_cleanly(tmp_path, store, monkeypatch, capsys):
    cred = _cred_file(tmp_path, "topsecret")
    out = tmp_path / "smt.yaml"
    monkeypatch.setenv("NODE_RED_CREDENTIAL_SECRET", "guess")
    assert main(["import", str(SEED_2023), "--credentials", str(cred), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cannot decrypt" in err and "wrong credential secret" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert store.names() == {}
