"""Node-RED delivery semantics: send shapes, cloning, ordering, _msgid, errors, links."""

import asyncio
import json

import pytest

from meterflow.errors import FlowError, TlsError
from meterflow.node import Node
from meterflow.schema import Field
from meterflow.testing import Harness, registry_with


class Emit(Node):
    """Sends whatever shape msg.emit holds (a test stand-in for a function node)."""

    type = "test-emit"
    schema = {"outputs": Field("int", default=1)}

    @classmethod
    def output_names(cls, config):
        return [str(i) for i in range(config.get("outputs", 1))]

    def on_input(self, msg):
        return msg.pop("emit")


class Mutate(Node):
    type = "test-mutate"

    def on_input(self, msg):
        msg["payload"]["touched"] = self.id
        return msg


class Boom(Node):
    type = "test-boom"
    schema = {"kind": Field("str", default="runtime")}

    def on_input(self, msg):
        if self.config["kind"] == "tls":
            raise TlsError("handshake failed")
        raise FlowError("boom", kind=self.config["kind"])


class Slow(Node):
    """An async node (like an HTTP request) that takes virtual time."""

    type = "test-slow"

    async def on_input(self, msg):
        await self.clock.sleep(5)
        msg["slow"] = True
        return msg


REG = registry_with(Emit, Mutate, Boom, Slow)


def harness(nodes: str, **kw) -> Harness:
    return Harness(text="meterflow: 1\nnodes:\n" + nodes, registry=REG, **kw)


async def test_fanout_first_gets_original_others_deep_copies():
    async with harness("""
  - {id: src, type: junction, wires: [a, b, c]}
  - {id: a, type: test-mutate}
  - {id: b, type: test-mutate}
  - {id: c, type: junction}
""") as h:
        original = {"payload": {"n": 1}}
        await h.send("src", original)
        # a received the very object sent; its mutation is visible on the original only
        assert original["payload"]["touched"] == "a"
        assert h.messages("b")[0]["payload"] == {"n": 1}
        assert h.messages("c")[0]["payload"] == {"n": 1}


async def test_clone_is_taken_at_send_time():
    async with harness("""
  - {id: src, type: test-emit, wires: [a, b]}
  - {id: a, type: junction}
  - {id: b, type: junction}
""") as h:
        msg = {"payload": {"v": 1}}
        h.inject("src", {"emit": msg})
        await h.settle()
        msg["payload"]["v"] = 2  # after delivery: only the original (a's) is affected
        assert h.messages("b")[0]["payload"] == {"v": 1}


async def test_send_shapes_per_output_null_and_nested():
    async with harness("""
  - {id: src, type: test-emit, outputs: 3, wires: [[a], [b], [c]]}
  - {id: a, type: junction}
  - {id: b, type: junction}
  - {id: c, type: junction}
""") as h:
        h.inject("src", {"emit": [{"payload": 1}, None, [{"payload": 2}, {"payload": 3}], {"payload": "extra"}]})
        await h.settle()
        assert h.payloads("a") == [1]
        assert h.payloads("b") == []
        assert h.payloads("c") == [2, 3]
        # all messages of one send share the first message's _msgid
        ids = {m["_msgid"] for m in h.messages("a") + h.messages("c")}
        assert len(ids) == 1


async def test_bare_object_goes_to_output_zero_only():
    async with harness("""
  - {id: src, type: test-emit, outputs: 2, wires: [[a], [b]]}
  - {id: a, type: junction}
  - {id: b, type: junction}
""") as h:
        await h.send("src", {"emit": {"payload": 7}})
        assert h.payloads("a") == [7] and h.payloads("b") == []


async def test_non_object_is_reported_and_siblings_still_sent():
    async with harness("""
  - {id: src, type: test-emit, outputs: 2, wires: [[a], [b]]}
  - {id: a, type: junction}
  - {id: b, type: junction}
""") as h:
        await h.send("src", {"emit": ["oops", {"payload": 1}]})
        assert h.payloads("b") == [1]
        assert any("message of type str" in text for _, text, _ in h.errors)


async def test_delivery_is_breadth_first_and_async():
    order = []

    class Rec(Node):
        type = "test-rec"

        def on_input(self, msg):
            order.append(self.id)
            return msg

    reg = registry_with(Rec)
    text = """meterflow: 1
nodes:
  - {id: n0, type: junction, wires: [a, b]}
  - {id: a, type: test-rec, wires: [c]}
  - {id: b, type: test-rec}
  - {id: c, type: test-rec}
"""
    async with Harness(text=text, registry=reg) as h:
        h.inject("n0", {"payload": 1})
        assert order == []  # nothing runs inside send/inject
        await h.settle()
        assert order == ["a", "b", "c"]


async def test_order_kept_per_wire():
    async with harness("""
  - {id: src, type: test-emit, wires: [a]}
  - {id: a, type: junction}
""") as h:
        for i in range(50):
            h.inject("src", {"emit": {"payload": i}})
        await h.settle()
        assert h.payloads("a") == list(range(50))


async def test_msgid_kept_through_the_flow():
    async with harness("""
  - {id: a, type: junction, wires: [b]}
  - {id: b, type: change, rules: [{set: topic, to: x}], wires: [c]}
  - {id: c, type: junction}
""") as h:
        await h.send("a", {"payload": 1, "_msgid": "abc"})
        assert h.messages("c")[0]["_msgid"] == "abc"


CATCHES = """
  - {id: bad, type: test-boom, name: Bad}
  - {id: tlsbad, type: test-boom, kind: tls}
  - {id: other, type: test-boom}
  - {id: c_scoped, type: catch, scope: [bad], wires: [out_scoped]}
  - {id: c_all, type: catch, wires: [out_all]}
  - {id: c_tls, type: catch, kinds: [tls], wires: [out_tls]}
  - {id: c_uncaught, type: catch, uncaught: true, wires: [out_uncaught]}
  - {id: out_scoped, type: junction}
  - {id: out_all, type: junction}
  - {id: out_tls, type: junction}
  - {id: out_uncaught, type: junction}
"""


async def test_catch_scope_kinds_and_error_shape():
    async with harness(CATCHES) as h:
        await h.send("bad", {"payload": 1, "error": "earlier"})
        [m] = h.messages("out_scoped")
        assert m["error"] == {"message": "boom", "kind": "runtime",
                              "source": {"id": "bad", "type": "test-boom", "name": "Bad", "count": 1}}
        assert m["_error"] == "earlier"
        assert len(h.messages("out_all")) == 1  # every matching catch gets its own copy
        assert h.messages("out_tls") == [] and h.messages("out_uncaught") == []
        await h.send("tlsbad", {"payload": 2})
        assert [x["error"]["kind"] for x in h.messages("out_tls")] == ["tls"]
        assert h.errors == []


async def test_scoped_catch_runs_before_catch_all():
    seen = []

    def spy(node):
        inner = node.on_input

        def recording(msg):
            seen.append(node.id)
            return inner(msg)

        node.on_input = recording

    async with harness(CATCHES) as h:
        for cid in ("c_all", "c_scoped"):
            spy(h.node(cid))
        await h.send("bad", {"payload": 1})
        assert seen == ["c_scoped", "c_all"]


async def test_uncaught_only_when_no_other_catch_took_it():
    async with harness("""
  - {id: bad, type: test-boom}
  - {id: c_other, type: catch, scope: [nobody]}
  - {id: nobody, type: junction}
  - {id: u1, type: catch, uncaught: true, wires: [o1]}
  - {id: u2, type: catch, uncaught: true, wires: [o2]}
  - {id: o1, type: junction}
  - {id: o2, type: junction}
""") as h:
        await h.send("bad", {"payload": 1})
        assert len(h.messages("o1")) == 1 and len(h.messages("o2")) == 1


async def test_uncaught_errors_are_logged_with_node_id(caplog):
    async with harness("  - {id: lonely, type: test-boom}\n") as h:
        await h.send("lonely", {"payload": 1})
        assert h.errors == [("lonely", "boom", "runtime")]
        assert "[test-boom lonely] boom" in caplog.text


async def test_catch_loop_guard_terminates():
    async with harness("""
  - {id: bad, type: test-boom}
  - {id: c, type: catch, scope: [bad], wires: [bad]}
""") as h:
        await h.send("bad", {"payload": 1})
        counts = [m["error"]["source"]["count"] for m in h.messages("c")]
        assert counts == list(range(1, 10))  # Node-RED: 9 deliveries, then the warning


async def test_error_without_msg_never_reaches_catch():
    class Silent(Node):
        type = "test-silent"

        def on_input(self, msg):
            self.error("no message attached")

    async with Harness(text="""meterflow: 1
nodes:
  - {id: s, type: test-silent}
  - {id: c, type: catch, wires: [o]}
  - {id: o, type: junction}
""", registry=registry_with(Silent)) as h:
        await h.send("s", {"payload": 1})
        assert h.messages("o") == []
        assert h.errors[0][1] == "no message attached"


async def test_async_node_error_reaches_catch_and_result_is_sent():
    async with harness("""
  - {id: slow, type: test-slow, wires: [o]}
  - {id: o, type: junction}
""") as h:
        h.inject("slow", {"payload": 1})
        await h.settle()
        assert h.messages("o") == []
        await h.advance(5)
        assert h.messages("o")[0]["slow"] is True


async def test_status_and_complete_nodes():
    class Stat(Node):
        type = "test-stat"

        def on_input(self, msg):
            self.status("green", "dot", "ok")
            msg["payload"] += 1
            return msg

    async with Harness(text="""meterflow: 1
nodes:
  - {id: s, type: test-stat}
  - {id: st, type: status, scope: [s], wires: [so]}
  - {id: so, type: junction}
  - {id: done, type: complete, scope: [s], wires: [co]}
  - {id: co, type: junction}
""", registry=registry_with(Stat)) as h:
        await h.send("s", {"payload": 1})
        assert h.messages("so")[0]["status"] == {"fill": "green", "shape": "dot", "text": "ok",
                                                 "source": {"id": "s", "type": "test-stat"}}
        [c] = h.messages("co")
        assert c["payload"] == 2  # the message as the watched node left it
        assert c["complete"]["source"]["id"] == "s"


async def test_link_out_in_and_call_with_return():
    async with harness("""
  - {id: lo, type: link-out, links: [li]}
  - {id: li, type: link-in, wires: [after_in]}
  - {id: after_in, type: junction}
  - {id: li2, type: link-in, links: [lo]}
  - {id: call, type: link-call, links: [sub], wires: [back]}
  - {id: sub, type: link-in, wires: [double]}
  - {id: double, type: change, rules: [{set: payload, to: "payload * 2", to_type: jsonata}], wires: [ret]}
  - {id: ret, type: link-out, mode: return}
  - {id: back, type: junction}
""") as h:
        await h.send("lo", {"payload": 1})
        assert h.messages("after_in")[0]["_event"] == "node:lo"
        assert len(h.messages("li2")) == 1  # a link listed from the link-in side works too
        await h.send("call", {"payload": 21})
        [m] = h.messages("back")
        assert m["payload"] == 42 and "_linkSource" not in m


async def test_link_call_timeout_reports_error():
    async with harness("""
  - {id: call, type: link-call, links: [sink], timeout: 30s, wires: [back]}
  - {id: sink, type: link-in}
  - {id: back, type: junction}
  - {id: c, type: catch, scope: [call], wires: [o]}
  - {id: o, type: junction}
""") as h:
        await h.send("call", {"payload": 1, "target": "x"})
        await h.advance(29)
        assert h.messages("o") == []
        await h.advance(2)
        [m] = h.messages("o")
        assert m["error"]["message"] == "timeout" and m["error"]["kind"] == "timeout"
        assert m["target"] == "x"


async def test_disabled_node_drops_messages():
    async with harness("""
  - {id: a, type: junction, wires: [b, c]}
  - {id: b, type: junction, disabled: true}
  - {id: c, type: junction}
""") as h:
        await h.send("a", {"payload": 1})
        assert "b" not in h.received and h.payloads("c") == [1]


async def test_virtual_clock_runs_long_waits_instantly():
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with harness("""
  - {id: slow, type: test-slow, wires: [o]}
  - {id: o, type: junction}
""") as h:
        for _ in range(720):  # an hour of 5 s waits
            h.inject("slow", {"payload": 1})
            await h.advance(5)
        assert len(h.messages("o")) == 720
    assert loop.time() - started < 2.0


@pytest.mark.parametrize("store", ["memory", "file"])
async def test_context_survives_restart_only_with_file_store(tmp_path, store):
    text = f"""meterflow: 1
name: ctx
context: {{store: {store}, dir: {tmp_path}/state}}
nodes:
  - {{id: setter, type: change, rules: [{{set: flow.reading.value, to: 42}}, {{set: global.g, to: x}}]}}
"""
    async with Harness(text=text, file=str(tmp_path / "ctx.yaml"), registry=REG) as h:
        await h.send("setter", {"payload": 1})
        assert h.flow_context.get("reading.value") == 42
    async with Harness(text=text, file=str(tmp_path / "ctx.yaml"), registry=REG) as h:
        expected = 42 if store == "file" else None
        assert h.flow_context.get("reading.value") == expected
        assert h.global_context.get("g") == ("x" if store == "file" else None)


async def test_file_context_flushes_soon_after_change(tmp_path):
    text = f"""meterflow: 1
context: {{store: file, dir: {tmp_path}, flush: 2s}}
nodes:
  - {{id: setter, type: change, rules: [{{set: flow.n, to: 1}}]}}
"""
    async with Harness(text=text, registry=REG) as h:
        await h.send("setter", {"payload": 1})
        assert not (tmp_path / "flow.json").exists()
        await h.advance(2)
        for _ in range(200):  # written by a worker thread, off the event loop
            if (tmp_path / "flow.json").exists():
                break
            await asyncio.sleep(0.01)
        assert json.loads((tmp_path / "flow.json").read_text()) == {"n": 1}


async def test_stop_drains_in_flight_messages():
    h = harness("""
  - {id: slow, type: test-slow, wires: [o]}
  - {id: o, type: junction}
""")
    await h.start()
    h.inject("slow", {"payload": 1})
    await h.settle()
    stopping = asyncio.ensure_future(h.stop())
    await asyncio.sleep(0)
    await h.advance(5)  # the in-flight request finishes during the drain
    assert await stopping is True
    assert len(h.messages("o")) == 1


async def test_stop_flushes_holding_nodes_in_a_chain():
    h = harness("""
  - {id: d1, type: delay, delay: 3m, wires: [d2]}
  - {id: d2, type: delay, delay: 3m, wires: [o]}
  - {id: o, type: junction}
""")
    await h.start()
    h.inject("d1", {"payload": "reading"})
    await h.settle()
    assert await h.stop() is True
    assert h.payloads("o") == ["reading"]  # released by both delays, never lost


async def test_delay_on_shutdown_drop_discards_and_counts(caplog):
    h = harness("""
  - {id: wait, type: delay, delay: 3m, on_shutdown: drop, wires: [o]}
  - {id: o, type: junction}
""")
    await h.start()
    h.inject("wait", {"payload": "poll again"})
    await h.settle()
    await h.stop()
    assert h.messages("o") == []
    assert "dropped 1 held message(s)" in caplog.text


async def test_secret_named_context_values_are_redacted_and_jsonata_uses_engine_clock():
    from meterflow import redact

    async with harness("""
  - id: s
    type: change
    rules:
      - {set: flow.accessToken, to: eyJ-very-secret-token}
      - {set: payload, to: '$millis()', to_type: jsonata}
    wires: [o]
  - {id: o, type: junction}
""", start_time=1_800_000_000) as h:
        await h.advance(1)
        await h.send("s", {"payload": 0})
        assert h.payloads("o") == [1_800_000_001_000]
        assert redact.redact("Bearer eyJ-very-secret-token") == "Bearer ***"


async def test_change_move_to_an_explicit_msg_path():
    async with harness("""
  - id: mv
    type: change
    rules: [{move: headers, to: request_headers, to_type: msg}]
    wires: [o]
  - {id: o, type: junction}
""") as h:
        await h.send("mv", {"payload": 1, "headers": {"a": "b"}})
        [m] = h.messages("o")
        assert m["request_headers"] == {"a": "b"} and "headers" not in m
