"""An example meterflow node pack: one node type, ``kwh-delta``.

``kwh-delta`` turns cumulative meter readings into consumption since the previous
reading, keeping the previous reading in node context (so a restart with a file
context store continues where it left off)::

    - id: delta
      type: kwh-delta
      property: payload          # where the cumulative reading is
      output: delta              # where to put the difference
      reset_tolerance: 0.1       # a drop of more than 10 % counts as a meter reset
      wires: [publish]

A reading lower than the previous one by more than ``reset_tolerance`` is a meter
reset: the delta restarts from zero instead of going negative.  Non-numeric input is
an error of kind ``parse`` that a catch node can handle.
"""

from __future__ import annotations

from meterflow import hookimpl
from meterflow.errors import ParseError
from meterflow.message import MISSING, get, set_path
from meterflow.node import Node
from meterflow.schema import Field


class KwhDelta(Node):
    type = "kwh-delta"
    summary = "Consumption since the previous cumulative reading (handles meter resets)"
    schema = {
        "property": Field("path", "message property holding the cumulative reading", default="payload"),
        "output": Field("path", "message property that receives the delta", default="delta"),
        "reset_tolerance": Field("number", "a relative drop larger than this is a meter reset",
                                 default=0.1, minimum=0, maximum=1),
    }

    def on_input(self, msg: dict):
        value = get(msg, self.config["property"])
        if value is MISSING or isinstance(value, bool) or not isinstance(value, int | float):
            raise ParseError(f"expected a number at msg.{self.config['property']}, got {value!r}")
        previous = self.context.get("previous")
        delta = 0.0
        if previous is not None:
            delta = value - previous
            if delta < 0 and -delta > previous * self.config["reset_tolerance"]:
                delta = value  # the meter restarted from zero
        self.context.set("previous", value)
        set_path(msg, self.config["output"], round(delta, 6))
        return msg


@hookimpl
def meterflow_node_types():
    return [KwhDelta]
