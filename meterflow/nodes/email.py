"""E-mail: an ``smtp-server`` config node and the ``email`` output node (smtplib in a thread).

::

    config:
      - id: smtp
        type: smtp-server
        host: smtp.example.com
        security: implicit_tls      # implicit_tls (port 465) | starttls (587) | none (25, a local relay)
        username: meter@example.com
        password: ${creds:smtp.password}
        tls: my-tls                 # optional tls-profile (CA bundle, client certificate)
    nodes:
      - id: mail
        type: email
        server: smtp
        to: support@smartmetertexas.com   # beats msg.to (Node-RED's e-mail node does the same)
        subject: New certificate          # used when msg.topic / msg.title are not set

Message mapping (as node-red-node-email): ``msg.to`` / ``cc`` / ``bcc`` (a string with
commas or a list), ``msg.from`` (else the node's ``from``, else the user name),
``msg.topic`` the subject (an explicit ``""`` is kept; else ``msg.title``, else the node's
``subject``), ``msg.payload`` the text — a dict becomes JSON, text that looks like HTML
is also sent as HTML (with ``msg.plaintext`` as the text part), bytes become an attachment
(``msg.filename``).  ``msg.attachments``: a list (or one) of ``{filename, content | path,
contentType}``; ``content`` is text or bytes; ``path`` is read when the message arrives.

Sending goes through an outbox (:mod:`meterflow.outbox`): connection errors, timeouts and
SMTP 4xx replies are retried with backoff (the message waits, optionally spooled);
a 5xx reply, a refused login or a TLS failure is permanent and goes to catch nodes
(kinds ``smtp``, ``auth``, ``tls``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # smtplib, ssl and email cost ~15 ms to import: only when mail is sent
    import ssl
    from email.message import EmailMessage

from .. import redact
from ..errors import AuthError, ConfigError, ConnectError, FlowError, ParseError, TlsError
from ..errors import TimeoutError as FlowTimeout
from ..node import Node
from ..outbox import FIELDS as OUTBOX_FIELDS
from ..outbox import Item, OutputNode, Reject, Retry, for_node, tls_context
from ..schema import Field, parse_duration

_HTML = re.compile(r"<[a-z][\s\S]*>", re.I)
DEFAULT_PORT = {"implicit_tls": 465, "starttls": 587, "none": 25}


class SmtpServer(Node):
    type = "smtp-server"
    summary = "An SMTP server: implicit TLS, STARTTLS or plain, with login from credentials"
    is_config = True
    schema = {
        "host": Field("str", "server host name", required=True),
        "port": Field("int", "port (default: 465 implicit_tls, 587 starttls, 25 none)", minimum=1, maximum=65535),
        "security": Field("str", "implicit_tls: TLS from the first byte (SMTPS); starttls: upgrade a plain "
                          "connection; none: no TLS (a local relay)", choices=tuple(DEFAULT_PORT),
                          default="implicit_tls"),
        "tls": Field("ref", "tls-profile config node (CA bundle, client certificate, server name)", ref="tls-profile"),
        "verify": Field("bool", "verify the server certificate (when no tls profile is given)", default=True),
        "username": Field("str", "login user (no login when unset)"),
        "password": Field("str", "login password, e.g. ${creds:smtp.password}", secret=True),
        "timeout": Field("duration", "connection and reply timeout", default=30.0),
    }


    def setup(self) -> None:
        if self.config.get("password"):
            redact.add(self.config["password"])

    @property
    def port(self) -> int:
        return self.config.get("port") or DEFAULT_PORT[self.config["security"]]

    def ssl_context(self) -> ssl.SSLContext:
        import ssl

        if self.config.get("tls"):
            return tls_context(self, self.config["tls"])
        ctx = ssl.create_default_context()
        if not self.config["verify"]:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        """Deliver one message (blocking: run it in a thread).  Raises Retry / Reject."""
        import smtplib
        import ssl

        c = self.config
        host, port, timeout = c["host"], self.port, parse_duration(c["timeout"])
        where = f"SMTP {host}:{port}"
        try:
            if c["security"] == "implicit_tls":
                conn = smtplib.SMTP_SSL(host, port, timeout=timeout, context=self.ssl_context())
            else:
                conn = smtplib.SMTP(host, port, timeout=timeout)
            with conn:
                if c["security"] == "starttls":
                    conn.starttls(context=self.ssl_context())
                if c.get("username"):
                    conn.login(c["username"], c.get("password") or "")
                refused = conn.sendmail(sender, recipients, raw)
            if refused:  # some recipients accepted: the message went; say who did not get it
                raise Reject(FlowError(f"{where}: some recipients were refused: {_refused(refused)}", kind="smtp"))
        except (Retry, Reject):
            raise
        except smtplib.SMTPAuthenticationError as e:
            err = AuthError(f"{where}: login refused ({e.smtp_code}): {_text(e.smtp_error)}")
            if 400 <= e.smtp_code < 500:
                raise Retry(err) from None
            raise Reject(err) from None
        except smtplib.SMTPNotSupportedError as e:
            raise Reject(ConfigError(f"{where}: {e}")) from None
        except smtplib.SMTPRecipientsRefused as e:
            codes = [code for code, _ in e.recipients.values()]
            err = FlowError(f"{where}: recipients refused: {_refused(e.recipients)}", kind="smtp")
            if codes and all(400 <= c < 500 for c in codes):
                raise Retry(err) from None
            raise Reject(err) from None
        except smtplib.SMTPResponseException as e:  # sender refused, data error, others with a code
            err = FlowError(f"{where}: {e.smtp_code} {_text(e.smtp_error)}", kind="smtp", code=e.smtp_code)
            if 400 <= e.smtp_code < 500:
                raise Retry(err) from None
            raise Reject(err) from None
        except ssl.SSLCertVerificationError as e:
            raise Reject(TlsError(f"{where}: server certificate not trusted: {e.verify_message or e}")) from None
        except ssl.SSLError as e:
            raise Reject(TlsError(f"{where}: TLS failure: {e.reason or e}")) from None
        except TimeoutError:  # the built-in one (socket timeouts)
            raise Retry(FlowTimeout(f"{where}: timeout")) from None
        except (OSError, smtplib.SMTPException) as e:
            raise Retry(ConnectError(f"{where}: {type(e).__name__}: {e}")) from None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _refused(refused: dict) -> str:
    return ", ".join(f"{addr} ({code} {_text(text)})" for addr, (code, text) in refused.items())


def addresses(value: Any) -> list[str]:
    """``"a@x, B <b@y>"`` or a list of them -> ``["a@x", "B <b@y>"]``."""
    from email.utils import getaddresses

    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for name, addr in getaddresses([str(v) for v in items]):
        if addr:
            out.append(f"{name} <{addr}>" if name else addr)
    return out


def _content_bytes(att: dict) -> bytes:
    if "content" in att and att["content"] is not None:
        content = att["content"]
        if isinstance(content, bytes | bytearray):
            return bytes(content)
        if isinstance(content, dict) and content.get("type") == "Buffer":  # Node-RED's JSON Buffer
            return bytes(content.get("data") or [])
        if isinstance(content, str):
            if att.get("encoding") == "base64":
                return base64.b64decode(content)
            return content.encode("utf-8")
        raise ParseError(f"attachment {att.get('filename')!r}: content must be text or bytes, "
                         f"got {type(content).__name__}")
    if att.get("path"):
        try:
            return Path(att["path"]).read_bytes()
        except OSError as e:
            raise FlowError(f"attachment {att['path']}: {e.strerror or e}", kind="io") from None
    raise ParseError(f"attachment {att.get('filename')!r} has neither content nor path")


class Email(OutputNode):
    type = "email"
    summary = "Send msg.payload as an e-mail (text/HTML, attachments) through an smtp-server; retried"
    schema = {
        "server": Field("ref", "smtp-server config node", ref="smtp-server", required=True),
        "to": Field("str|list", "recipient(s); when set they beat msg.to"),
        "cc": Field("str|list", "copy recipient(s); when set they beat msg.cc"),
        "bcc": Field("str|list", "blind copy recipient(s); when set they beat msg.bcc"),
        "from": Field("str", "sender (default: msg.from, else the login user)"),
        "subject": Field("str", "subject when msg.topic and msg.title are unset", default="Message from meterflow"),
        **OUTBOX_FIELDS,
    }


    def setup(self) -> None:
        self.server: SmtpServer = self.config_node(self.config["server"])
        self.outbox = for_node(self, self._sink, on_delivered=self._delivered, on_dropped=self._dropped)

    async def _sink(self, batch: list[Item]) -> None:
        for item in batch:
            d = item.data
            await asyncio.to_thread(self.server.send, d["from"], d["to"], base64.b64decode(d["raw"]))
            self.outbox.mark_done(item)

    def build(self, msg: dict) -> tuple[str, list[str], EmailMessage]:
        import mimetypes
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        c = self.config
        server = self.server.config
        to = addresses(c.get("to") or msg.get("to"))
        cc = addresses(c.get("cc") or msg.get("cc"))
        bcc = addresses(c.get("bcc") or msg.get("bcc"))
        if not (to or cc or bcc):
            raise ConfigError("no recipient: set 'to' on the node or msg.to")
        sender = msg.get("from") or c.get("from") or server.get("username")
        if not sender:
            raise ConfigError("no sender: set msg.from, the node's 'from' or the server's username")
        if "topic" in msg and msg["topic"] is not None:
            subject = str(msg["topic"])
        elif msg.get("title"):
            subject = str(msg["title"])
        else:
            subject = c["subject"]
        em = EmailMessage()
        em["From"] = str(sender)
        if to:
            em["To"] = ", ".join(to)
        if cc:
            em["Cc"] = ", ".join(cc)
        em["Subject"] = subject
        em["Date"] = formatdate(self.clock.time(), localtime=False)
        em["Message-ID"] = make_msgid(domain="meterflow")
        for k, v in (msg.get("headers") or {}).items() if isinstance(msg.get("headers"), dict) else ():
            if k.lower().startswith("x-"):
                em[k] = str(v)
        payload = msg.get("payload")
        attachments: list[dict] = []
        if isinstance(payload, bytes | bytearray):
            attachments.append({"filename": msg.get("filename") or "attachment.bin", "content": bytes(payload)})
            text = str(msg.get("description") or "Attached from meterflow.")
        elif isinstance(payload, dict | list):
            text = json.dumps(payload, ensure_ascii=False, indent=2)
        else:
            text = "" if payload is None else str(payload)
        if _HTML.search(text):
            em.set_content(str(msg.get("plaintext") or _strip_html(text)))
            em.add_alternative(text, subtype="html")
        else:
            em.set_content(text)
        extra = msg.get("attachments")
        if isinstance(extra, dict):
            extra = [extra]
        for att in [*attachments, *(extra or [])]:
            if not isinstance(att, dict):
                raise ParseError(f"an attachment is a mapping {{filename, content | path, contentType}}, got {att!r}")
            data = _content_bytes(att)
            filename = att.get("filename") or (Path(att["path"]).name if att.get("path") else "attachment.bin")
            ctype = att.get("contentType") or mimetypes.guess_type(filename)[0] or "application/octet-stream"
            maintype, _, subtype = ctype.partition("/")
            em.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
        return str(sender), [*to, *cc, *bcc], em

    def on_input(self, msg: dict):
        import email.policy
        from email.utils import getaddresses

        if "payload" not in msg:
            self.warn("no payload: nothing sent")
            return None
        sender, recipients, em = self.build(msg)  # bad input -> catch, nothing queued
        envelope_to = [addr for _, addr in getaddresses(recipients)]
        _, from_addr = getaddresses([sender])[0]
        raw = em.as_bytes(policy=email.policy.SMTP)  # CRLF line ends: smtplib sends bytes as they are
        self.outbox.put({"from": from_addr or sender, "to": envelope_to,
                         "raw": base64.b64encode(raw).decode("ascii")}, msg)
        return None


def _strip_html(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text).strip()


NODE_TYPES = [SmtpServer, Email]
