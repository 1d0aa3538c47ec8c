"""The local control channel of a running engine (``meterflow inject FILE NODE``).

A Unix socket only the user can reach (its directory is mode 0700), one JSON request
per connection: ``{"cmd": "inject", "node": "<id>", "instance": "<name>"}`` -> ``{"ok": true}``
or ``{"ok": false, "error": "..."}``.  One socket per flow file (instances share it).  No TCP
port is opened at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path


def socket_path(flow_name: str) -> Path:
    base = os.environ.get("METERFLOW_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base) / "meterflow" if base else Path(tempfile.gettempdir()) / f"meterflow-{os.getuid()}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in flow_name)
    return root / f"{safe}.sock"


class ControlServer:
    def __init__(self, flows: list, path: Path):
        self.flows = flows  # the flows (instances) of one flow file
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists():
            self.path.unlink()  # a stale socket from a killed run
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            reply = self.dispatch(json.loads(line or b"{}"))
        except (TimeoutError, ValueError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    def dispatch(self, req: dict) -> dict:
        if req.get("cmd") != "inject":
            return {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}
        node_id, instance = req.get("node"), req.get("instance")
        flows = [f for f in self.flows if instance is None or f.instance == instance]
        if not flows:
            names = ", ".join(sorted(str(f.instance) for f in self.flows))
            return {"ok": False, "error": f"no instance {instance!r} (running: {names})"}
        if len(flows) > 1:
            return {"ok": False, "error": f"{len(flows)} instances run this flow: name one with --instance"}
        node = flows[0].nodes.get(str(node_id))
        if node is None:
            return {"ok": False, "error": f"no node {node_id!r} in the running flow"}
        fire = getattr(node, "fire", None)
        if fire is None:
            return {"ok": False, "error": f"{node_id!r} is a {node.type} node; only inject nodes can be fired"}
        fire()
        return {"ok": True}


def request(path: Path, payload: dict, timeout: float = 5.0) -> dict:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b"{}")
