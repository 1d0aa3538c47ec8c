"""status: receives status changes (``node.status(...)``) of nodes in its scope."""

from __future__ import annotations

from .scoped import SCOPE, Scoped


class Status(Scoped):
    type = "status"
    summary = "Report status changes of nodes in its scope as msg.status"
    schema = {"scope": SCOPE}

    def setup(self) -> None:
        self.flow.status_nodes.append(self)

NODE_TYPES = [Status]
