"""The node contract every node type, built-in or third-party, implements.

A node type is a subclass of :class:`Node` with a ``type`` name, a one-line ``summary``,
a config ``schema`` and an :meth:`on_input` handler.  Return a message (output 0),
``None`` (nothing), or a list with one entry per output (an entry may be a list of
messages, or ``None``).  Raise an exception (ideally a :class:`meterflow.errors.FlowError`
with a ``kind``) to report an error: it reaches the catch nodes whose scope covers this
node.  ``on_input`` may be ``async``; everything else about it stays the same.

See ``meterflow/nodes/change.py`` for a complete, small example.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from .schema import Field

if TYPE_CHECKING:  # pragma: no cover
    from .clock import Clock
    from .context import Context
    from .runtime import Flow


class Node:
    #: The name used in flow files (``type: change``).
    type: ClassVar[str] = ""
    #: One line for ``meterflow nodes``.
    summary: ClassVar[str] = ""
    #: Config fields (everything in the node's YAML mapping except id/type/name/wires/disabled).
    schema: ClassVar[dict[str, Field]] = {}
    #: Config nodes hold shared settings (brokers, TLS profiles); they have no wires.
    is_config: ClassVar[bool] = False
    #: Number of outputs when it does not depend on the config.
    outputs: ClassVar[int] = 1
    #: False for nodes that call :meth:`done` themselves (e.g. delay, when a message leaves).
    auto_done: ClassVar[bool] = True
    #: Nodes that produce messages on their own (inject, cron): stopped first at shutdown.
    is_source: ClassVar[bool] = False

    def __init__(self, flow: Flow, node_id: str, name: str, config: dict):
        self.flow = flow
        self.id = node_id
        self.name = name
        self.config = config
        self.log = logging.getLogger(f"meterflow.node.{self.type}")
        # Filled by the runtime when it wires the flow.
        self._wires: list[list[Node]] = []
        self._fast: Node | None = None
        self._context: Context | None = None

    # ---- class-level hooks used by validation --------------------------------------------
    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        """Names of the outputs for this config; wires may use them (``wires: {ready: [...]}``)."""
        return [str(i) for i in range(cls.outputs)]

    @classmethod
    def check(cls, config: dict) -> list[tuple[tuple, str]]:
        """Extra validation beyond the schema: ``[(path_in_config, message)]``."""
        return []

    @classmethod
    def references(cls, config: dict) -> list[tuple[tuple, str, str | None]]:
        """Ids this config names: ``[(path, id, want)]``.

        ``want`` is a config-node type (``"mqtt-broker"``, several joined by ``|``), ``None``
        for any flow node, or ``"node:<type>"`` for a flow node of that type.  The default
        covers every ``Field("ref", ref="<type>")`` of the schema; override for more."""
        return [((name,), config[name], f.ref) for name, f in cls.schema.items()
                if f.ref and "ref" in f.type.split("|") and config.get(name) is not None]

    # ---- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Called once all nodes exist and are wired (config nodes first)."""

    async def start(self) -> None:
        """Open connections, start timers.  Config nodes start before the others."""

    async def flush(self) -> None:
        """Shutdown, after the sources stopped: release anything held (timers, queues) so the
        engine can deliver it before any node stops.  Default: nothing held."""

    async def stop(self) -> None:
        """Close what ``start`` opened.  Messages still queued are delivered first."""

    def on_input(self, msg: dict) -> Any:
        """Handle one message.  Default: pass it on unchanged."""
        return msg

    # ---- what a node can do --------------------------------------------------------------------
    @property
    def clock(self) -> Clock:
        return self.flow.engine.clock

    def send(self, msg: Any) -> None:
        """Send a message (output 0) or a list with one entry per output."""
        self.flow.engine.send(self, msg)

    def error(self, err: BaseException | str, msg: dict | None = None) -> None:
        """Report an error; with a ``msg`` it reaches catch nodes, without it is only logged."""
        self.flow.engine.report_error(self, err, msg)

    def done(self, msg: dict) -> None:
        """Tell complete nodes this message was handled (only needed when ``auto_done`` is False)."""
        self.flow.engine.complete(self, msg)

    def status(self, fill: str | None = None, shape: str | None = None, text: Any = "") -> None:
        status = {k: v for k, v in (("fill", fill), ("shape", shape)) if v}
        status["text"] = "" if text is None else str(text)
        self.flow.engine.report_status(self, status)

    def warn(self, text: str) -> None:
        self.log.warning("[%s] %s", self.id, self.flow.engine.redact(text))

    def config_node(self, node_id: str) -> Node:
        """The config node with this id (validated to exist at load time)."""
        return self.flow.nodes[node_id]

    @property
    def context(self) -> Context:
        if self._context is None:
            self._context = self.flow.engine.contexts.node(self.flow, self.id)
        return self._context

    @property
    def flow_context(self) -> Context:
        return self.flow.context

    @property
    def global_context(self) -> Context:
        return self.flow.engine.contexts.global_

    def __repr__(self) -> str:
        return f"<{self.type} {self.id}>"
