"""link in / link out / link call: virtual wires, and a call that returns.

A link exists when either side lists the other.  A link out in ``return`` mode sends
the message back to the link call that called into this path (a stack in
``msg._linkSource``, so calls nest).
"""

from __future__ import annotations

import secrets

from ..errors import FlowError, TimeoutError
from ..message import clone
from ..node import Node
from ..schema import Field, parse_duration


def _links(config: dict, target: str) -> list:
    """The ids in ``links``, each required to be a flow node of type ``target``."""
    return [(("links", i), x, f"node:{target}") for i, x in enumerate(config.get("links") or [])]


class LinkIn(Node):
    type = "link-in"
    summary = "Entry point of a virtual wire (from link out / link call)"
    schema = {"links": Field("nodes", "link-out nodes that send here (either side may list the other)", default=list)}
    references = classmethod(lambda cls, config: _links(config, "link-out"))

    def setup(self) -> None:
        for out_id in self.config["links"]:
            out = self.flow.nodes.get(out_id)
            if isinstance(out, LinkOut):
                out.add_target(self)


class LinkOut(Node):
    type = "link-out"
    summary = "Send to link-in nodes, or return to the calling link call (mode: return)"
    schema = {
        "mode": Field("str", "'link' sends to the listed link-in nodes; 'return' returns to the link call",
                      choices=("link", "return"), default="link"),
        "links": Field("nodes", "link-in nodes to send to", default=list),
    }
    outputs = 0
    references = classmethod(lambda cls, config: _links(config, "link-in"))

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._targets: list[Node] = []  # link-in nodes may add themselves before our setup

    def setup(self) -> None:
        for in_id in self.config["links"]:
            node = self.flow.nodes.get(in_id)
            if node is not None:
                self.add_target(node)

    def add_target(self, node: Node) -> None:
        if node not in self._targets:
            self._targets.append(node)
            self._wires = [self._targets]
            self.flow.engine.rewire(self)

    def on_input(self, msg: dict):
        if self.config["mode"] == "return":
            stack = msg.get("_linkSource")
            if not stack:
                self.warn("missing return node information (this link out was not reached from a link call)")
                return None
            entry = stack.pop()
            if not stack:
                del msg["_linkSource"]
            caller = self.flow.nodes.get(entry.get("node"))
            if isinstance(caller, LinkCall):
                caller.returned(entry.get("id"), msg)
            return None
        msg["_event"] = f"node:{self.id}"
        return msg


class LinkCall(Node):
    type = "link-call"
    summary = "Call a link-in path and continue with what its link out (return) sends back"
    schema = {
        "links": Field("nodes", "the one link-in node to call (static mode)", default=list),
        "dynamic": Field("bool", "call the link-in named by msg.target (id or name)", default=False),
        "timeout": Field("duration", "error 'timeout' when nothing returns within this time", default=30),
    }
    auto_done = False
    references = classmethod(lambda cls, config: _links(config, "link-in"))

    @classmethod
    def check(cls, config: dict) -> list:
        if not config.get("dynamic") and len(config.get("links") or []) != 1:
            return [(("links",), "a static link call names exactly one link-in node")]
        return []

    def setup(self) -> None:
        self._pending: dict[str, tuple[dict, object]] = {}
        self._timeout = parse_duration(self.config["timeout"])

    def _target(self, msg: dict) -> Node:
        if not self.config["dynamic"]:
            return self.flow.nodes[self.config["links"][0]]
        want = msg.get("target")
        node = self.flow.nodes.get(want) if isinstance(want, str) else None
        if isinstance(node, LinkIn):
            return node
        named = [n for n in self.flow.nodes.values() if isinstance(n, LinkIn) and n.name == want]
        if len(named) > 1:
            raise FlowError(f"Multiple link-in nodes named {want!r} found")
        if not named:
            raise FlowError(f"target link-in node {want!r} not found")
        return named[0]

    def on_input(self, msg: dict):
        target = self._target(msg)
        call_id = secrets.token_hex(14)
        msg.setdefault("_linkSource", []).append({"id": call_id, "node": self.id})
        saved = clone(msg)
        timer = self.clock.call_later(self._timeout, lambda: self._timed_out(call_id))
        self._pending[call_id] = (saved, timer)
        self.flow.engine.deliver(target, msg)
        return None

    def _timed_out(self, call_id: str) -> None:
        saved, _ = self._pending.pop(call_id, (None, None))
        if saved is not None:
            saved["_linkSource"].pop()
            if not saved["_linkSource"]:
                del saved["_linkSource"]
            self.error(TimeoutError("timeout"), saved)

    def returned(self, call_id: str, msg: dict) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return  # already timed out
        entry[1].cancel()
        self.send(msg)
        self.done(msg)

    async def stop(self) -> None:
        for _, timer in self._pending.values():
            timer.cancel()
        self._pending.clear()

NODE_TYPES = [LinkIn, LinkOut, LinkCall]
