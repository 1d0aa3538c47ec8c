"""debug: show a message property (or the whole message) in the log, secrets redacted.

Every shown value also goes to the engine's debug listeners (``meterflow.testing``
collects them; ``meterflow run --log-format json`` prints them structured).
"""

from __future__ import annotations

import json
import logging

from .. import redact
from ..message import MISSING, get
from ..node import Node
from ..schema import Field

log = logging.getLogger("meterflow.debug")
MAX_CHARS = 1000


class Debug(Node):
    type = "debug"
    summary = "Log msg.payload, another property or the whole message (secrets redacted)"
    schema = {
        "property": Field("path|str", "property to show, or 'msg' for the whole message", default="payload"),
        "active": Field("bool", "off: stay silent", default=True),
        "level": Field("str", "log level", choices=("debug", "info", "warning"), default="info"),
    }
    outputs = 0

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return []

    def setup(self) -> None:
        self._level = getattr(logging, self.config["level"].upper())
        self._prop = self.config["property"]

    def on_input(self, msg: dict):
        listeners = self.flow.engine.debug_listeners
        if not self.config["active"] or not (listeners or log.isEnabledFor(self._level)):
            return None  # nobody looks: skip the redaction, which grows with the number of secrets
        value = msg if self._prop == "msg" else get(msg, self._prop)
        shown = redact.redact_value(None if value is MISSING else value)
        for listener in listeners:
            listener(self, shown, msg)
        if log.isEnabledFor(self._level):
            try:
                text = json.dumps(shown, default=repr, ensure_ascii=False)
            except (TypeError, ValueError):
                text = repr(shown)
            if len(text) > MAX_CHARS:
                text = text[:MAX_CHARS] + "…"
            label = self.name or self.id
            log.log(self._level, "[debug:%s] %s", label, text, extra={"node": self.id, "value": shown})
        return None


NODE_TYPES = [Debug]
