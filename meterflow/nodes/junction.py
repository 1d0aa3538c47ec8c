"""junction: a routing point that passes every message on unchanged."""

from ..node import Node


class Junction(Node):
    type = "junction"
    summary = "Pass messages through unchanged (a routing point for tidy wiring)"


NODE_TYPES = [Junction]
