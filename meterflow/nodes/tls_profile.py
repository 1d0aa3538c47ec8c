"""tls-profile: a client certificate, CA and verification settings for tls-request.

A config node; request nodes name it with ``tls: <id>``::

    config:
      - id: smt_cert
        type: tls-profile
        cert: /ssl/fullchain.pem          # PEM; the chain is sent after the leaf
        key: /ssl/privkey.pem             # omit when cert holds the key too
        key_passphrase: ${creds:smt.key_passphrase}   # only for an encrypted key
        ca: /etc/meterflow/smt-ca.pem     # trust only these CAs (default: the system store)
        verify: true                      # check the server's certificate and name
        server_name: services.smartmetertexas.net     # SNI and the name checked
        min_version: "1.2"                # 1.0 | 1.1 | 1.2 | 1.3 (quote it)

Files are read when the flow is checked and when it starts: an unreadable or non-PEM file,
a key that does not match the certificate or a wrong passphrase is an error naming the
file.  When the files change on disk (a Let's Encrypt renewal) the next request uses the
new certificate, without a restart; connections are pooled per profile and the old pool
is closed once its requests finish.  Relative paths are relative to the working directory.
"""

from __future__ import annotations

from .. import redact
from ..node import Node
from ..schema import Field
from ..tlsprofile import TLS_VERSIONS, TlsFileError, TlsSettings, acquire, build_context, release


class TlsProfileNode(Node):
    type = "tls-profile"
    summary = "Client certificate, key, CA and verification for tls-request (re-read when renewed)"
    is_config = True
    outputs = 0
    schema = {
        "cert": Field("str", "client certificate PEM file (fullchain.pem); may hold the key too"),
        "key": Field("str", "private key PEM file (privkey.pem)"),
        "key_passphrase": Field("str", "passphrase of an encrypted key; write ${creds:NAME.FIELD}", secret=True),
        "ca": Field("str", "PEM file of the CAs to trust instead of the system store"),
        "verify": Field("bool", "verify the server certificate and host name", default=True),
        "server_name": Field("str", "host name sent as SNI and checked against the server certificate"),
        "min_version": Field("str", "lowest TLS version allowed", choices=TLS_VERSIONS),
        "max_version": Field("str", "highest TLS version allowed", choices=TLS_VERSIONS),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        s = TlsSettings.from_config(config)
        problems = []
        if s.min_version and s.max_version and TLS_VERSIONS.index(s.min_version) > TLS_VERSIONS.index(s.max_version):
            problems.append((("min_version",), f"min_version {s.min_version} is above max_version {s.max_version}"))
        try:
            build_context(s)
        except TlsFileError as e:
            # A file that does not exist yet (certificates not issued on this machine) only
            # warns in `check`; `run` refuses to load with this same message.
            text = f"missing: {e}" if e.missing else str(e)
            problems.append(((e.field,) if e.field in config else (), text))
        return problems

    def setup(self) -> None:
        settings = TlsSettings.from_config(self.config)
        if settings.key_passphrase:
            redact.add(settings.key_passphrase)
        self.settings = settings
        self.profile, self.clients = acquire(settings, self.id)
        if not settings.verify:
            self.warn("verify is off: the server's certificate is not checked")

    def ssl_context(self):
        """The current ``ssl.SSLContext`` (rebuilt when the files change on disk)."""
        return self.profile.context()

    async def start(self) -> None:
        self.profile.context()  # a bad file stops the start with a message naming it

    async def stop(self) -> None:
        await release(self.settings, self.clients)


NODE_TYPES = [TlsProfileNode]
