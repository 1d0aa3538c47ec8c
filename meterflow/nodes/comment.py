"""comment: documentation inside a flow; never receives or sends."""

from ..node import Node
from ..schema import Field


class Comment(Node):
    type = "comment"
    summary = "A note in the flow; does nothing"
    schema = {"text": Field("str", "the note")}
    outputs = 0

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return []

    def on_input(self, msg: dict):
        return None


NODE_TYPES = [Comment]
