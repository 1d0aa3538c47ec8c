"""The encrypted credential store, ${creds:NAME.FIELD} in flow files, and the credentials node."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
from cryptography.fernet import Fernet

from meterflow import credentials, redact
from meterflow.credentials import CredentialStore
from meterflow.errors import CredentialsError
from meterflow.plugins import Registry, make_manager
from meterflow.testing import FlowLoadError, Harness

pytestmark = pytest.mark.usefixtures("private_store")  # tests/conftest.py: never ~/.config


def registry() -> Registry:
    pm = make_manager(load_entry_points=False)
    if not pm.is_registered(credentials):
        pm.register(credentials, name="meterflow.credentials")
    return Registry(pm)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------------------- the store


def test_first_set_creates_a_0600_key_file_and_an_encrypted_0600_store(private_store):
    store = CredentialStore()
    store.set("smt", "password", "s3cret-value")
    store.set("smt", "user", "alice")
    assert store.path == private_store / "credentials.json"
    assert mode(store.path) == 0o600 and mode(store.key_file) == 0o600
    assert mode(private_store) == 0o700
    assert store.key_file == private_store / "credentials.key"
    raw = store.path.read_text()
    assert "s3cret-value" not in raw and "alice" not in raw
    data = json.loads(raw)
    assert sorted(data["secrets"]["smt"]) == ["password", "user"]
    # Every value decrypts with the key file's key.
    f = Fernet(store.key_file.read_bytes().strip())
    assert f.decrypt(data["secrets"]["smt"]["password"].encode()) == b"s3cret-value"
    # A fresh store object (another process) reads them back.
    again = CredentialStore()
    assert again.get("smt", "password") == "s3cret-value"
    assert again.fields("smt") == {"password": "s3cret-value", "user": "alice"}
    assert again.names() == {"smt": ["password", "user"]}
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in private_store.iterdir()) == ["credentials.json", "credentials.json.lock",
                                                               "credentials.key"]


def test_values_read_are_redacted():
    CredentialStore().set("mqtt", "password", "broker-pass-123")
    redact.forget("broker-pass-123")  # as in a fresh process
    assert CredentialStore().get("mqtt", "password") == "broker-pass-123"
    assert redact.redact("login with broker-pass-123") == "login with ***"


def test_wrong_key_is_a_clear_error_and_nothing_is_overwritten(private_store, monkeypatch):
    store = CredentialStore()
    store.set("smt", "password", "s3cret-value")
    before = store.path.read_bytes()
    monkeypatch.setenv("METERFLOW_KEY", Fernet.generate_key().decode())
    other = CredentialStore()
    with pytest.raises(CredentialsError, match=r"the key in METERFLOW_KEY does not decrypt credential store .*"
                                                r"\(wrong METERFLOW_KEY\?\)"):
        other.get("smt", "password")
    with pytest.raises(CredentialsError, match="does not decrypt"):
        other.set("smt", "user", "bob")  # would mix two keys in one store
    assert store.path.read_bytes() == before
    # A wrong key file says so too.
    monkeypatch.delenv("METERFLOW_KEY")
    store.key_file.write_bytes(Fernet.generate_key())
    with pytest.raises(CredentialsError, match=f"the key in {store.key_file} does not decrypt"):
        CredentialStore().get("smt", "password")


def test_missing_key_file_with_existing_secrets_never_regenerates(private_store):
    store = CredentialStore()
    store.set("smt", "password", "s3cret-value")
    store.key_file.unlink()
    for action in (lambda s: s.get("smt", "password"), lambda s: s.set("smt", "user", "bob")):
        with pytest.raises(CredentialsError, match="holds secrets but there is no key: set METERFLOW_KEY or restore"):
            action(CredentialStore())
    assert not store.key_file.exists()


def test_key_from_environment_and_invalid_key(private_store, monkeypatch):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("METERFLOW_KEY", key)
    store = CredentialStore()
    store.set("influx", "token", "tok-abcdef")
    assert not store.key_file.exists()  # the environment's key is used, no file is made
    assert CredentialStore(key=key).get("influx", "token") == "tok-abcdef"
    monkeypatch.setenv("METERFLOW_KEY", "not-a-key")
    with pytest.raises(CredentialsError, match="the key in METERFLOW_KEY is not a valid key: expected 44 characters"):
        CredentialStore().get("influx", "token")


def test_unknown_names_fields_and_damaged_store(private_store):
    store = CredentialStore()
    with pytest.raises(CredentialsError, match="no credential 'smt' in .* which does not exist yet"):
        store.get("smt", "password")
    store.set("smt", "password", "s3cret-value")
    with pytest.raises(CredentialsError, match="no credential 'smtp' .*did you mean 'smt'"):
        store.get("smtp", "password")
    with pytest.raises(CredentialsError, match="has no field 'pasword'.*did you mean 'password'"):
        store.get("smt", "pasword")
    with pytest.raises(CredentialsError, match="invalid credential name 'a.b'"):
        store.set("a.b", "x", "value")
    store.delete("smt", "password")
    assert store.names() == {}
    store.path.write_text("{not json")
    with pytest.raises(CredentialsError, match="is damaged"):
        CredentialStore().names()


def test_loose_permissions_are_warned_about(private_store, caplog):
    store = CredentialStore()
    store.set("smt", "password", "s3cret-value")
    os.chmod(store.key_file, 0o644)
    with caplog.at_level(logging.WARNING, "meterflow.credentials"):
        CredentialStore().get("smt", "password")
    assert "is readable by others (mode 0644)" in caplog.text


# ----------------------------------------------------------------------------- ${creds:...} in flows

FLOW = """meterflow: 1
nodes:
  - id: set
    type: change
    rules:
      - set: password
        to: "${creds:smt.password}"
      - set: url
        to: "https://u:${creds:smt.password}@example/"
    wires: [out]
  - {id: out, type: junction}
"""


async def test_flow_reference_resolves_and_is_masked_in_traces(caplog):
    CredentialStore().set("smt", "password", "s3cret-value")
    h = Harness(text=FLOW, registry=registry())
    h.engine.trace = True
    caplog.set_level(logging.DEBUG)
    async with h:
        await h.send("set", {"payload": 1})
    [msg] = h.messages("out")
    assert msg["password"] == "s3cret-value" and msg["url"] == "https://u:s3cret-value@example/"
    assert "s3cret-value" not in caplog.text and "-> junction" in caplog.text


def test_flow_reference_errors_point_at_the_line():
    with pytest.raises(FlowLoadError) as e:
        Harness(text=FLOW.replace("smt.password", "smt"), registry=registry()).load()
    assert "test-flow.yaml:7:" in str(e.value) and "write ${creds:NAME.FIELD}" in str(e.value)
    with pytest.raises(FlowLoadError) as e:
        Harness(text=FLOW, registry=registry()).load()
    assert "no credential 'smt'" in str(e.value) and "meterflow creds set smt password" in str(e.value)


# ----------------------------------------------------------------------------- the credentials node

NODE_FLOW = """meterflow: 1
nodes:
  - id: creds
    type: credentials
    credential: smt
    fields:
      username: user
      auth.password: password
      flow.smt_user: user
    wires: [out]
  - {id: out, type: junction}
  - {id: catch, type: catch, kinds: [credentials], wires: [caught]}
  - {id: caught, type: junction}
"""


async def test_credentials_node_copies_fields_and_follows_changes(caplog):
    store = CredentialStore()
    store.set("smt", "user", "alice-user")
    store.set("smt", "password", "pw-one-1")
    h = Harness(text=NODE_FLOW)
    h.engine.trace = True
    caplog.set_level(logging.DEBUG)
    async with h:
        await h.send("creds", {"payload": 1, "auth": {"scheme": "basic"}})
        store.set("smt", "password", "pw-two-2")  # `meterflow creds set` while running
        await h.send("creds", {"payload": 2})
        first, second = h.messages("out")
        assert first["username"] == "alice-user" and first["auth"] == {"scheme": "basic", "password": "pw-one-1"}
        assert second["auth"]["password"] == "pw-two-2"
        assert h.flow_context.get("smt_user") == "alice-user"
        store.delete("smt", "user")
        await h.send("creds", {"payload": 3})
        [caught] = h.messages("caught")
        assert caught["error"]["kind"] == "credentials" and "has no field(s) user" in caught["error"]["message"]
        assert len(h.messages("out")) == 2
    for secret in ("alice-user", "pw-one-1", "pw-two-2"):
        assert secret not in caplog.text


async def test_credentials_node_reports_a_missing_credential_at_start():
    h = Harness(text=NODE_FLOW)
    async with h:
        pass
    assert h.errors and h.errors[0][0] == "creds" and "no credential 'smt'" in h.errors[0][1]


def test_credentials_node_config_is_checked():
    bad = NODE_FLOW.replace("credential: smt", "credential: smt.x").replace("auth.password", "auth..password")
    with pytest.raises(FlowLoadError) as e:
        Harness(text=bad).load()
    assert "invalid credential name 'smt.x'" in str(e.value) and "auth..password" in str(e.value)
