"""Logging set-up for the CLI: readable lines on a terminal, or JSON lines; secrets masked."""

from __future__ import annotations

import json
import logging
import sys
import time

from .redact import RedactingFilter, redact_value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("node", "value"):
            if hasattr(record, key):
                out[key] = redact_value(getattr(record, key))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "pretty", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # httpx (used by plugins such as meterflow-iec) logs every request at INFO; meterflow's
    # --trace is the place for that.  aiohttp's client logs nothing per request.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
