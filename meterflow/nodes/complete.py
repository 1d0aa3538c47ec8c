"""complete: fires when a node in its scope has finished with a message (no error)."""

from __future__ import annotations

from ..schema import Field
from .scoped import Scoped


class Complete(Scoped):
    type = "complete"
    summary = "Fire when the listed nodes finish handling a message without error"
    schema = {"scope": Field("nodes", "ids of the nodes to watch", required=True)}

    def setup(self) -> None:
        for node_id in self.config["scope"]:
            self.flow.complete_nodes.setdefault(node_id, []).append(self)

NODE_TYPES = [Complete]
