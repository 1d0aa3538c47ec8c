"""email against aiosmtpd with trustme certificates: implicit TLS and STARTTLS with login,
attachments byte for byte, HTML, Bcc only in the envelope; a 4xx reply retried, a 5xx
reply / refused login / untrusted certificate reported to catch by kind."""

import email
import email.policy

import pytest
from services import SMTP_PASSWORD, SMTP_USER

from meterflow.nodes.email import addresses
from meterflow.testing import Harness

ENV = {"SMTP_PASSWORD": SMTP_PASSWORD}


def flow(port: int, security: str, ca: str | None, password: str = "${SMTP_PASSWORD}", extra: str = "") -> str:
    tls = f"""
  - id: ca
    type: tls-profile
    ca: {ca}""" if ca else ""
    return f"""meterflow: 1
config:{tls}
  - id: smtp
    type: smtp-server
    host: 127.0.0.1
    port: {port}
    security: {security}{'''
    tls: ca''' if ca else ''}
    username: {SMTP_USER}
    password: "{password}"
    timeout: 5s
nodes:
  - id: mail
    type: email
    server: smtp
    subject: fallback subject
    retry_min: 10s{extra}
  - id: catch
    type: catch
    scope: [mail]
    wires: [caught]
  - id: caught
    type: debug
    active: false
  - id: done
    type: complete
    scope: [mail]
    wires: [sent]
  - id: sent
    type: debug
    active: false
"""


@pytest.fixture
def smtp_clean(smtp):
    smtp.replies.clear()
    smtp.messages.clear()
    return smtp


def test_addresses():
    assert addresses("a@x.test, Bee <b@y.test>") == ["a@x.test", "Bee <b@y.test>"]
    assert addresses(["a@x.test", "c@z.test"]) == ["a@x.test", "c@z.test"]
    assert addresses(None) == [] and addresses("") == []


@pytest.mark.parametrize("mode", ["implicit_tls", "starttls"])
async def test_attachment_arrives_byte_for_byte_over_tls(smtp_clean, mode):
    smtp = smtp_clean
    port = smtp.implicit_port if mode == "implicit_tls" else smtp.starttls_port
    async with Harness(text=flow(port, mode, smtp.ca_path), env=ENV) as h:
        await h.send("mail", {
            "to": "support@smt.test", "cc": ["ops@meter.test"], "bcc": "audit@meter.test",
            "topic": "New certificate",
            "payload": "<p>Please install the <b>new</b> certificate.</p>",
            "plaintext": "Please install the new certificate.",
            "attachments": [{"path": str(smtp.cert_path)},
                            {"filename": "reading.json", "content": '{"kwh": 1.5}', "contentType": "application/json"}],
        })
        assert h.errors == [] and h.messages("caught") == []
        (mail_from, rcpts, raw, got_port), = smtp.wait(1)
        assert len(h.messages("sent")) == 1  # complete fires once the server accepted it
    assert got_port == port and mail_from == SMTP_USER
    assert sorted(rcpts) == ["audit@meter.test", "ops@meter.test", "support@smt.test"]
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["Subject"] == "New certificate" and m["To"] == "support@smt.test" and m["Cc"] == "ops@meter.test"
    assert m["Bcc"] is None  # only in the envelope
    assert m.get_body(("plain",)).get_content().strip() == "Please install the new certificate."
    assert "<b>new</b>" in m.get_body(("html",)).get_content()
    atts = {a.get_filename(): a for a in m.iter_attachments()}
    assert atts["server.pem"].get_payload(decode=True) == smtp.cert_path.read_bytes()
    assert atts["reading.json"].get_content_type() == "application/json"
    assert atts["reading.json"].get_payload(decode=True) == b'{"kwh": 1.5}'


async def test_4xx_is_retried_with_backoff(smtp_clean):
    smtp = smtp_clean
    smtp.replies.append("451 4.3.0 mailbox busy, try later")
    async with Harness(text=flow(smtp.implicit_port, "implicit_tls", smtp.ca_path), env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": {"kwh": 2}})
        out = h.node("mail").outbox
        assert out.stats()["queued"] == 1 and out.retried == 1 and smtp.messages == []
        await h.advance(15)  # the retry fires on the engine clock
        (_, _, raw, _), = smtp.wait(1)
        assert out.stats() == {"queued": 0, "delivered": 1, "retried": 1, "dropped": 0}
        assert h.messages("caught") == []
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["Subject"] == "fallback subject" and '"kwh": 2' in m.get_content()


async def test_5xx_goes_to_catch_and_is_not_retried(smtp_clean):
    smtp = smtp_clean
    smtp.replies.append("554 5.6.0 message rejected")
    async with Harness(text=flow(smtp.starttls_port, "starttls", smtp.ca_path), env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": "hello"})
        err = h.messages("caught")[0]["error"]
        assert err["kind"] == "smtp" and err["code"] == 554 and "rejected" in err["message"]
        assert h.node("mail").outbox.stats() == {"queued": 0, "delivered": 0, "retried": 0, "dropped": 1}
        assert h.messages("sent") == []


async def test_refused_login_is_an_auth_error_without_the_password_in_it(smtp_clean):
    smtp = smtp_clean
    async with Harness(text=flow(smtp.implicit_port, "implicit_tls", smtp.ca_path, password="wrong-password-1"),
                       env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": "hello"})
        err = h.messages("caught")[0]["error"]
        assert err["kind"] == "auth" and "535" in err["message"]
        assert "wrong-password-1" not in str(h.messages("caught"))


async def test_untrusted_server_certificate_is_a_tls_error(smtp_clean):
    smtp = smtp_clean  # no tls profile: the system store does not know the test CA
    async with Harness(text=flow(smtp.implicit_port, "implicit_tls", None), env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": "hello"})
        err = h.messages("caught")[0]["error"]
        assert err["kind"] == "tls" and "certificate" in err["message"]
    assert smtp.messages == []


async def test_server_down_keeps_the_mail_queued(smtp_clean):
    from services import free_port

    async with Harness(text=flow(free_port(), "implicit_tls", smtp_clean.ca_path, extra="\n    drain: 0.1s"),
                       env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": "hello"})
        out = h.node("mail").outbox
        assert out.stats()["queued"] == 1 and h.messages("caught") == []


async def test_bad_attachment_goes_to_catch_before_queueing(smtp_clean, tmp_path):
    async with Harness(text=flow(smtp_clean.implicit_port, "implicit_tls", smtp_clean.ca_path), env=ENV) as h:
        await h.send("mail", {"to": "a@x.test", "payload": "x", "attachments": [{"path": str(tmp_path / "none.pem")}]})
        err = h.messages("caught")[0]["error"]
        assert err["kind"] == "io" and "none.pem" in err["message"]
        assert h.node("mail").outbox.stats()["queued"] == 0


async def test_login_from_the_credential_store_is_never_printed(smtp_clean, tmp_path, monkeypatch, caplog):
    import logging

    from cryptography.fernet import Fernet

    from meterflow.credentials import CredentialStore

    key = Fernet.generate_key().decode()
    store = tmp_path / "credentials.json"
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(store))
    monkeypatch.setenv("METERFLOW_KEY", key)
    CredentialStore(store, key=key).set("smtp", "password", SMTP_PASSWORD)
    smtp = smtp_clean
    smtp.replies.append("451 4.3.0 try later")  # a retry, logged, on the way
    text = flow(smtp.starttls_port, "starttls", smtp.ca_path, password="${creds:smtp.password}")
    with caplog.at_level(logging.DEBUG):
        h = Harness(text=text)
        h.engine.trace = True
        async with h:
            await h.send("mail", {"to": "a@x.test", "payload": "reading"})
            await h.advance(15)
            smtp.wait(1)
            assert h.node("mail").outbox.delivered == 1
    assert any(r.name == "meterflow.trace" for r in caplog.records)  # traced, at debug level
    assert "451" in caplog.text  # the retry was logged ...
    assert SMTP_PASSWORD not in caplog.text  # ... and nothing printed the password
