"""What catch, status and complete nodes share: a scope of node ids."""

from __future__ import annotations

from ..node import Node
from ..schema import Field

SCOPE = Field("nodes|str", "'all' (default) or a list of node ids this node watches", default="all")


class Scoped(Node):
    outputs = 1

    @property
    def scope(self) -> set[str] | None:
        s = self.config.get("scope", "all")
        return None if s in (None, "all") else set(s)

    def accepts(self, node_id: str) -> bool:
        scope = self.scope
        return scope is None or node_id in scope

    @classmethod
    def check(cls, config: dict) -> list:
        s = config.get("scope")
        if isinstance(s, str) and s != "all":
            return [(("scope",), f"scope is 'all' or a list of node ids, got {s!r}")]
        return []

    @classmethod
    def references(cls, config: dict) -> list:
        s = config.get("scope")
        return [(("scope", i), x, None) for i, x in enumerate(s)] if isinstance(s, list) else []
