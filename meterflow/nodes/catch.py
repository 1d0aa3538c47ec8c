"""catch: receives errors from nodes in its scope, optionally only of given kinds.

``msg.error = {message, kind, source: {id, type, name, count}}`` (plus e.g. ``status``
for http errors); an existing ``msg.error`` moves to ``msg._error``.  With
``uncaught: true`` it only gets errors no other catch node took.
"""

from __future__ import annotations

from ..errors import KINDS
from ..schema import Field
from .scoped import SCOPE, Scoped


class Catch(Scoped):
    type = "catch"
    summary = "Catch errors thrown by nodes in its scope (all, or listed ids), optionally by kind"
    schema = {
        "scope": SCOPE,
        "kinds": Field("list", f"only errors of these kinds ({', '.join(KINDS)}, ...)", item=Field("str")),
        "uncaught": Field("bool", "only errors no other catch node handled", default=False),
    }

    def setup(self) -> None:
        self.uncaught = bool(self.config.get("uncaught"))
        kinds = self.config.get("kinds")
        self.kinds = set(kinds) if kinds else None
        self._scope = Scoped.scope.fget(self)
        self.flow.catch_nodes.append(self)

    @property
    def scope(self):
        return self._scope

    def accepts(self, node_id: str, kind: str = "runtime") -> bool:  # type: ignore[override]
        if node_id == self.id:
            return False  # a catch node failing must not feed itself
        return (self._scope is None or node_id in self._scope) and (self.kinds is None or kind in self.kinds)

    @classmethod
    def check(cls, config: dict) -> list:
        problems = Scoped.check.__func__(cls, config)
        for i, k in enumerate(config.get("kinds") or []):
            if k not in KINDS:
                from ..schema import did_you_mean

                hint = did_you_mean(k, KINDS)
                if hint:  # plugins may add kinds; only flag likely typos
                    problems.append((("kinds", i), f"unknown error kind {k!r}{hint}"))
        return problems


class CatchProtocolError(Catch):
    """Shorthand used by the SMT flows: a catch of kind ``tls`` on listed nodes."""

    type = "catch-protocol-error"
    summary = "Catch TLS errors (handshake, certificate rejected) from the listed nodes"
    schema = {"scope": Field("nodes", "the nodes whose TLS errors to catch", required=True)}

    def setup(self) -> None:
        self.config = dict(self.config, kinds=["tls"], uncaught=False)
        super().setup()

NODE_TYPES = [Catch, CatchProtocolError]
