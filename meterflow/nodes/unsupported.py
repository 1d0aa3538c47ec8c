"""unsupported / unsupported-config: a Node-RED node that meterflow cannot run, kept as it was.

``meterflow import`` writes one of these for every Node-RED node it cannot map, so nothing
is dropped silently: the original config stays in the flow, ``meterflow check`` names the
node and why it cannot run, and ``meterflow export`` writes it back to Node-RED unchanged::

    - id: current_certificate_expired
      type: unsupported
      nodered_type: server-state-changed
      reason: meterflow has no Home Assistant state-change trigger
      outputs: 1
      nodered: {server: 2fc58e7f.94a9f2, entityidfilter: input_boolean.cert_updated, ...}
      wires: [read_certificate]

Replace the node with a meterflow equivalent (or delete it) to run the flow.  Config nodes
that cannot be mapped become ``unsupported-config`` under ``config:``.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..node import Node
from ..schema import Field

SCHEMA = {
    "nodered_type": Field("str", "the Node-RED node type", required=True),
    "reason": Field("str", "why meterflow cannot run it", default="no meterflow equivalent"),
    "nodered": Field("dict", "the node's Node-RED config (without id, z, x, y and wires)", default=dict),
}


def _problem(config: dict) -> list:
    return [((), f"unsupported Node-RED node type {config['nodered_type']}: {config['reason']}")]


class Unsupported(Node):
    type = "unsupported"
    summary = "A Node-RED node meterflow cannot run, kept with its original config (check reports it)"
    schema = {**SCHEMA, "outputs": Field("int", "number of outputs (keeps its wires)", default=1, minimum=0)}

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        n = config.get("outputs", 1)
        return [str(i) for i in range(n if isinstance(n, int) and n >= 0 else 1)]

    @classmethod
    def check(cls, config: dict) -> list:
        return _problem(config)

    def on_input(self, msg: dict):
        raise ConfigError(f"unsupported Node-RED node type {self.config['nodered_type']}: {self.config['reason']}")


class UnsupportedConfig(Node):
    type = "unsupported-config"
    summary = "A Node-RED config node meterflow cannot use, kept with its original config (check reports it)"
    is_config = True
    schema = dict(SCHEMA)

    @classmethod
    def check(cls, config: dict) -> list:
        return _problem(config)


NODE_TYPES = [Unsupported, UnsupportedConfig]
