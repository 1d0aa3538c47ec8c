"""credentials: copy secret fields from the credential store into the message.

Like node-red-contrib-credentials, but the values live in meterflow's encrypted store
(``meterflow creds set smt password``), not in the flow::

    - id: creds
      type: credentials
      credential: smt              # the credential's name in the store
      fields:                      # target property: field of that credential
        username: user             # msg.username = smt.user
        password: password         # msg.password = smt.password
        flow.smt_user: user        # flow./global. targets set context instead
      wires: [build_request]

The store is read when the node starts (a missing credential or field is an error
then) and again whenever the store file changes, so ``meterflow creds set`` takes
effect without a restart.  Every value is registered as a secret: debug, trace, logs
and errors show ``***`` in its place.  A field missing at run time raises an error of
kind ``credentials`` and the message is not sent.  Beware: a flow./global. target in a
``file`` context store is written to disk in clear text.
"""

from __future__ import annotations

from ..errors import CredentialsError
from ..message import PathError, set_path
from ..node import Node
from ..schema import Field
from .change import split_target


class CredentialsNode(Node):
    type = "credentials"
    summary = "Copy secret fields from the encrypted credential store into msg/flow/global properties"
    schema = {
        "credential": Field("str", "name of the credential in the store (`meterflow creds list`)", required=True),
        "fields": Field("dict", "target property (msg path, or flow./global. key) -> field name of the credential",
                        required=True),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        from ..credentials import check_name

        problems = []
        try:
            check_name("credential name", config["credential"])
        except CredentialsError as e:
            problems.append((("credential",), str(e)))
        if not config["fields"]:
            problems.append((("fields",), "list at least one target: field"))
        for target, field in config["fields"].items():
            try:
                split_target(str(target))
            except PathError as e:
                problems.append((("fields", target), str(e)))
            try:
                check_name("field name", field)
            except CredentialsError as e:
                problems.append((("fields", target), str(e)))
        return problems

    def setup(self) -> None:
        from ..credentials import default_store

        self.store = default_store()
        self.credential = self.config["credential"]
        self.targets = [(split_target(str(t)), f) for t, f in self.config["fields"].items()]

    async def start(self) -> None:
        self._values()  # a missing credential, field or key is reported at start

    def _values(self) -> dict[str, str]:
        values = self.store.fields(self.credential)
        missing = sorted({f for _, f in self.targets if f not in values})
        if missing:
            raise CredentialsError(f"credential {self.credential!r} has no field(s) {', '.join(missing)}"
                                   f" (fields: {', '.join(sorted(values))}); add with"
                                   f" `meterflow creds set {self.credential} {missing[0]}`")
        return values

    def on_input(self, msg: dict):
        values = self._values()
        for (scope, path), field in self.targets:
            if scope == "msg":
                set_path(msg, path, values[field])
            else:
                ctx = self.flow_context if scope == "flow" else self.global_context
                ctx.set(path, values[field])  # type: ignore[arg-type] - a compiled path works too
        return msg


NODE_TYPES = [CredentialsNode]
