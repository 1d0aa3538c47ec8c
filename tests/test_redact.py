"""Secrets masking: one trie-shaped pattern plus recent additions, longest secret wins, a
replaced context token is let go, and values under secret names in a context file are masked."""

import json
import secrets

from meterflow import redact
from meterflow.context import FileStore, MemoryStore


def test_a_secret_inside_another_is_masked_whole():
    redact.add("inner-4321")
    redact.add("outer-inner-4321-tail")
    assert redact.redact("a outer-inner-4321-tail b inner-4321 c") == "a *** b *** c"


def test_thousands_of_secrets_from_many_meters_all_masked():
    tokens = [secrets.token_urlsafe(24) for _ in range(3000)]
    for i, t in enumerate(tokens):
        redact.add(t)
        if i % 7 == 0:  # redactions interleaved with additions, as when meters log while logging in
            assert redact.redact(f"Bearer {t}") == "Bearer ***"
    text = " ".join(tokens[::100])
    assert set(redact.redact(text).split()) == {"***"}
    assert redact.redact("no secret here, just 23459.133 kWh") == "no secret here, just 23459.133 kWh"
    for t in tokens:
        redact.forget(t)


def test_a_renewed_context_token_replaces_the_old_one_in_the_mask():
    ctx = MemoryStore().scope("flow")
    ctx.set("token", "first-token-abcdef")
    ctx.set("token", "second-token-abcdef")
    assert redact.redact("second-token-abcdef") == "***"
    assert "first-token-abcdef" not in redact._secrets  # let go: the set does not grow forever
    ctx.set("token", None)
    assert "second-token-abcdef" not in redact._secrets


def test_a_value_registered_twice_stays_masked_after_one_forget():
    redact.add("shared-pass-9876")  # e.g. a credential
    ctx = MemoryStore().scope("flow")
    ctx.set("password", "shared-pass-9876")
    ctx.set("password", "other-pass-9876")
    assert redact.redact("shared-pass-9876") == "***"


def test_secret_named_values_in_a_context_file_are_masked_when_loaded(tmp_path):
    (tmp_path / "flow.json").write_text(json.dumps({"smt": {"access_token": "loaded-token-777"}, "n": 1}))
    store = FileStore(tmp_path)
    assert store.scope("flow").get("n") == 1
    assert redact.redact("Bearer loaded-token-777") == "Bearer ***"


def test_a_rotated_stored_token_is_let_go(private_store):
    """IEC rotates its tokens every 45 minutes for years: the mask holds the current ones only."""
    from meterflow.credentials import CredentialStore

    store = CredentialStore()
    for i in range(50):
        store.set_many([("iec", "id_token", f"id-token-{i:04d}-abcdef"), ("iec", "refresh_token", f"rt-{i:04d}-xyz")])
        assert store.fields("iec")["id_token"] == f"id-token-{i:04d}-abcdef"  # read back, as the nodes do
    live = [s for s in redact._secrets if s.startswith(("id-token-", "rt-"))]
    assert sorted(live) == ["id-token-0049-abcdef", "rt-0049-xyz"]
    assert redact.redact("Bearer id-token-0049-abcdef") == "Bearer ***"
