"""cert-check: watch a client certificate's lifecycle (replaces the SMT shell script).

On every input message (e.g. a daily inject) it inspects the current certificate and
sends ``msg.payload = {fingerprint, not_after, seconds_left, expires_soon, wildcard,
key_matches, names, problems, changed}`` on output 1 (``info``).  When the current
certificate's fingerprint differs from the last one this node announced (kept in node
context, so it survives restarts), the same message also leaves output 2 (``changed``)
with ``msg.filename`` set — wire it to the email node that sends the certificate to SMT.
Each fingerprint is announced once.  The first certificate ever seen is only recorded
(it is presumably registered already) unless ``announce_first`` is set, as on the TLS
fallback path where a rejected certificate must be sent.  Nodes sharing ``state_key``
share that memory, so the daily check and the fallback never email the same one twice.

When ``previous_cert``/``previous_key`` are set and the previous certificate expires
within ``rotate_within``, the current pair is copied over the previous one (atomic
writes, key mode 0600), as the seed's Home Assistant automation did::

    - id: cert
      type: cert-check
      cert: /ssl/fullchain.pem
      key: /ssl/privkey.pem
      previous_cert: /media/smt/fullchain.pem
      previous_key: /media/smt/privkey.pem
      warn_within: 14d
      wires: {info: [log], changed: [mail_cert]}
"""

from __future__ import annotations

from .. import certs
from ..node import Node
from ..schema import Field, parse_duration


class CertCheck(Node):
    type = "cert-check"
    summary = "Inspect a client certificate: expiry, wildcard, key match, fingerprint; rotate the previous pair"
    schema = {
        "cert": Field("str", "the certificate in use (PEM, e.g. fullchain.pem)", required=True),
        "key": Field("str", "its private key, to check that they match"),
        "previous_cert": Field("str", "the previous certificate (the fallback the SMT flow uses)"),
        "previous_key": Field("str", "the previous private key"),
        "warn_within": Field("duration", "report expires_soon when less than this is left", default="14d"),
        "rotate_within": Field("duration", "copy current over previous when previous expires within this", default="1d"),
        "announce_first": Field("bool", "announce a certificate never seen before (else the first one is the baseline)",
                                default=False),
        "state_key": Field("str", "flow-context key remembering the last announced fingerprint, to share it between"
                                  " cert-check nodes (default: this node's own context)"),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return ["info", "changed"]

    @classmethod
    def check(cls, config: dict) -> list:
        if bool(config.get("previous_cert")) != bool(config.get("previous_key")):
            return [((), "set both previous_cert and previous_key, or neither")]
        return []

    def on_input(self, msg: dict):
        c = self.config
        now = self.clock.time()
        info = certs.inspect(c["cert"], c.get("key"), within_days=parse_duration(c["warn_within"]) / 86400, now=now)
        rotated = False
        if c.get("previous_cert"):
            try:
                prev = certs.inspect(c["previous_cert"], None, within_days=parse_duration(c["rotate_within"]) / 86400, now=now)
                due = prev.expires_soon and prev.fingerprint != info.fingerprint
            except Exception:
                due = True  # no usable previous certificate yet: take the current one
            if due and info.key_matches is not False:
                certs.rotate(c["cert"], c["key"], c["previous_cert"], c["previous_key"])
                rotated = True
                self.log.info("[%s] copied %s over %s", self.id, c["cert"], c["previous_cert"])
        store = self.flow_context if c.get("state_key") else self.context
        key = c.get("state_key") or "announced"
        last = store.get(key)
        changed = info.fingerprint != last and (last is not None or c["announce_first"])
        if changed or last is None:
            store.set(key, info.fingerprint)
        msg["payload"] = dict(info.as_dict(), problems=info.problems, changed=changed, rotated=rotated)
        msg["filename"] = c["cert"]
        return [msg, msg if changed else None]


NODE_TYPES = [CertCheck]
