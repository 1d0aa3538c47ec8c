"""function (Python): return shapes, node.send copies, context, outputs, errors, loop guard, async."""

from __future__ import annotations

import logging
import textwrap

import pytest

from meterflow.nodes.function import Function
from meterflow.testing import FlowLoadError


def fn_flow(code: str, outputs: int | str = 1, extra: str = "", more_nodes: str = "") -> str:
    """A function ``f`` whose outputs go to junctions o0, o1, ..."""
    n = outputs if isinstance(outputs, int) else outputs.count(",") + 1
    body = textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", " " * 6)
    outs = "".join(f"  - {{id: o{i}, type: junction}}\n" for i in range(n))
    wires = ", ".join(f"[o{i}]" for i in range(n))
    return f"""
nodes:
  - id: f
    type: function
    outputs: {outputs}
{extra}    code: |
{body}    wires: [{wires}]
{outs}{more_nodes}"""


# ---- return shapes --------------------------------------------------------------------------------

async def test_return_msg_none_and_new_message(flow):
    code = """
    if msg["payload"] == "skip":
        return None
    if msg["payload"] == "new":
        return {"payload": "fresh"}
    msg["payload"] = msg["payload"] * 2
    return msg
    """
    async with flow(fn_flow(code)) as h:
        first = await h.send("f", {"payload": 21})
        await h.send("f", {"payload": "skip"})
        await h.send("f", {"payload": "new"})
        assert h.payloads("o0") == [42, "fresh"]
        # every message sent keeps the input's _msgid, a new one too
        assert h.messages("o0")[0]["_msgid"] == first["_msgid"]
        assert h.messages("o0")[1]["_msgid"] == h.messages("f")[2]["_msgid"]


async def test_list_per_output_nested_lists_and_tuples(flow):
    code = """
    p = msg["payload"]
    if p == "both":
        return [msg, {"payload": "second"}]
    if p == "many":
        return [None, [{"payload": 1}, {"payload": 2}, None, {"payload": 3}]]
    if p == "tuple":
        return None, msg
    return [msg]
    """
    async with flow(fn_flow(code, outputs=2)) as h:
        for p in ("both", "many", "tuple", "first"):
            await h.send("f", {"payload": p})
        assert h.payloads("o0") == ["both", "first"]
        assert h.payloads("o1") == ["second", 1, 2, 3, "tuple"]


async def test_no_return_sends_nothing(flow):
    async with flow(fn_flow('msg["seen"] = True')) as h:
        await h.send("f", {"payload": 1})
        assert h.messages("o0") == []


async def test_non_message_return_is_logged_not_caught(flow, caplog):
    more = "  - {id: c, type: catch, scope: [f]}\n"
    async with flow(fn_flow('return "text"', more_nodes=more)) as h:
        with caplog.at_level(logging.ERROR):
            await h.send("f", {"payload": 1})
        assert h.messages("o0") == [] and h.messages("c") == []
        assert "message of type str" in caplog.text


# ---- node.send ----------------------------------------------------------------------------------------

async def test_send_copies_so_later_changes_are_not_seen(flow):
    code = """
    node.send(msg)
    msg["payload"]["state"] = "changed"
    node.send(msg, clone=False)
    msg["payload"]["state"] = "changed again"
    """
    async with flow(fn_flow(code)) as h:
        await h.send("f", {"payload": {"state": "original"}})
        # the first send was copied at once; the uncopied one shows the change made after it
        assert [p["state"] for p in h.payloads("o0")] == ["original", "changed again"]


async def test_send_several_then_return(flow):
    code = """
    for i in range(3):
        node.send({"payload": i})
    node.send([None, {"payload": "side"}])
    return msg
    """
    async with flow(fn_flow(code, outputs=2)) as h:
        sent = await h.send("f", {"payload": "last"})
        assert h.payloads("o0") == [0, 1, 2, "last"]
        assert h.payloads("o1") == ["side"]
        assert {m["_msgid"] for m in h.messages("o0") + h.messages("o1")} == {sent["_msgid"]}


# ---- context, env, setup/cleanup ---------------------------------------------------------------------------

async def test_context_flow_and_global(flow):
    code = """
    n = context.get("n", 0) + 1
    context.set("n", n)
    flow.set("last", msg["payload"])
    global_ctx.set("site.count", n)
    msg["payload"] = [n, context.flow.get("last"), context.global_.get("site.count"), sorted(context.keys())]
    return msg
    """
    async with flow(fn_flow(code)) as h:
        await h.send("f", {"payload": "a"})
        await h.send("f", {"payload": "b"})
        assert h.payloads("o0") == [[1, "a", 1, ["n"]], [2, "b", 2, ["n"]]]
        assert h.context("f").get("n") == 2
        assert h.flow_context.get("last") == "b"
        assert h.global_context.get("site") == {"count": 2}


async def test_env_and_node_identity(flow, monkeypatch):
    monkeypatch.setenv("MF_FN_TEST", "yes")
    code = 'return {"payload": [env.get("MF_FN_TEST"), env.get("MF_FN_MISSING", "dflt"), env.get("NR_NODE_ID"), node.id, node.outputs]}'
    async with flow(fn_flow(code)) as h:
        await h.send("f", {})
        assert h.payloads("o0") == [["yes", "dflt", "f", "f", 1]]


async def test_setup_names_are_visible_and_cleanup_runs(flow):
    extra = """    setup: |
      import math
      LIMIT = 10
      def root(x):
          return math.sqrt(x)
      global_ctx.set("setup_ran", True)
    cleanup: |
      global_ctx.set("cleaned", LIMIT)
"""
    async with flow(fn_flow('msg["payload"] = root(msg["payload"]) < LIMIT\nreturn msg', extra=extra)) as h:
        assert h.global_context.get("setup_ran") is True
        await h.send("f", {"payload": 81})
        await h.send("f", {"payload": 144})
        assert h.payloads("o0") == [True, False]
    assert h.global_context.get("cleaned") == 10


async def test_failed_setup_drops_messages_with_an_error(flow):
    extra = "    setup: |\n      raise RuntimeError('no database')\n"
    more = "  - {id: c, type: catch, scope: [f]}\n"
    async with flow(fn_flow("return msg", extra=extra, more_nodes=more)) as h:
        assert any("setup code failed" in text for _, text, _ in h.errors)
        await h.send("f", {"payload": 1})
        assert h.messages("o0") == []
        assert "no database" in h.messages("c")[0]["error"]["message"]


# ---- outputs -------------------------------------------------------------------------------------------------

async def test_named_outputs(flow):
    text = """
nodes:
  - id: f
    type: function
    outputs: [small, big]
    code: |
      return [msg, None] if msg["payload"] < 10 else [None, msg]
    wires: {small: [s], big: [b]}
  - {id: s, type: junction}
  - {id: b, type: junction}
"""
    assert Function.output_names({"outputs": ["small", "big"]}) == ["small", "big"]
    assert Function.output_names({"outputs": 3}) == ["0", "1", "2"]
    async with flow(text) as h:
        for p in (1, 50, 5):
            await h.send("f", {"payload": p})
        assert h.payloads("s") == [1, 5] and h.payloads("b") == [50]


async def test_zero_outputs(flow):
    text = """
nodes:
  - {id: f, type: function, outputs: 0, code: "flow.set('got', msg['payload'])"}
"""
    async with flow(text) as h:
        await h.send("f", {"payload": 3})
        assert h.flow_context.get("got") == 3


# ---- errors ------------------------------------------------------------------------------------------------------

async def test_exception_reaches_catch_with_line_and_msg_error_untouched(flow):
    code = """
    x = msg["payload"]
    y = 10 / x
    return msg
    """
    more = "  - {id: c, type: catch, scope: [f]}\n"
    async with flow(fn_flow(code, more_nodes=more)) as h:
        await h.send("f", {"payload": 0, "error": "earlier"})
        (caught,) = h.messages("c")
        err = caught["error"]
        assert err["kind"] == "runtime"
        assert err["message"] == "ZeroDivisionError: division by zero (line 2)"
        assert err["line"] == 2 and err["source"]["id"] == "f"
        assert caught["_error"] == "earlier"  # the input's msg.error moved aside by the runtime, not overwritten
        assert h.messages("o0") == []


async def test_flow_error_keeps_its_kind_and_node_error_with_msg(flow):
    code = """
    if msg["payload"] == "raise":
        raise FlowError("token expired", kind="auth", status=401)
    node.error("soft failure", msg)
    return msg
    """
    more = "  - {id: c, type: catch, scope: [f], kinds: [auth, runtime]}\n"
    async with flow(fn_flow(code, more_nodes=more)) as h:
        await h.send("f", {"payload": "raise"})
        await h.send("f", {"payload": "soft"})
        errors = [m["error"] for m in h.messages("c")]
        assert errors[0]["message"] == "token expired" and errors[0]["kind"] == "auth" and errors[0]["status"] == 401
        assert errors[1]["message"] == "soft failure"
        assert h.payloads("o0") == ["soft"]  # node.error does not stop the message


async def test_catch_function_raise_loop_terminates(flow, caplog):
    """Unlike Node-RED (which overwrites msg.error), the loop guard stops catch -> function -> raise."""
    text = """
nodes:
  - id: f
    type: function
    code: |
      raise ValueError("always")
  - {id: c, type: catch, scope: [f], wires: [f]}
"""
    async with flow(text) as h:
        with caplog.at_level(logging.WARNING):
            await h.send("f", {"payload": 1})
            await h.settle()
        counts = [m["error"]["source"]["count"] for m in h.messages("c")]
        assert counts == list(range(1, 10))  # 9 deliveries, then the guard refuses the 10th
        assert len(h.messages("f")) == 10
        assert "maximum number of catches" in caplog.text
        assert [e[0] for e in h.errors] == ["f"]  # the refused one is logged as uncaught


# ---- done / complete ---------------------------------------------------------------------------------------------

async def test_complete_fires_when_the_code_returns(flow):
    more = "  - {id: done, type: complete, scope: [f]}\n"
    async with flow(fn_flow("return None", more_nodes=more)) as h:
        await h.send("f", {"payload": 1})
        assert len(h.messages("done")) == 1


async def test_explicit_node_done_controls_completion(flow):
    code = """
    if msg["payload"] == "finish":
        node.done()
    elif msg["payload"] == "fail":
        node.done("it failed")
    """
    more = "  - {id: done, type: complete, scope: [f]}\n  - {id: c, type: catch, scope: [f]}\n"
    async with flow(fn_flow(code, more_nodes=more)) as h:
        assert h.node("f").auto_done is False
        await h.send("f", {"payload": "later"})
        assert h.messages("done") == []
        await h.send("f", {"payload": "finish"})
        assert [m["payload"] for m in h.messages("done")] == ["finish"]
        await h.send("f", {"payload": "fail"})
        assert [m["payload"] for m in h.messages("done")] == ["finish"]
        assert h.messages("c")[0]["error"]["message"] == "it failed"


# ---- async code and timers ---------------------------------------------------------------------------------------

async def test_await_runs_on_the_virtual_clock(flow):
    code = """
    node.status(fill="yellow", text="waiting")
    await node.sleep(60)
    msg["payload"] = "after a minute"
    return msg
    """
    more = "  - {id: st, type: status, scope: [f]}\n"
    async with flow(fn_flow(code, more_nodes=more)) as h:
        h.inject("f", {"payload": 1})
        await h.advance(59)
        assert h.messages("o0") == []
        await h.advance(1)
        assert h.payloads("o0") == ["after a minute"]
        assert h.messages("st")[0]["status"]["text"] == "waiting"


async def test_async_error_reaches_catch(flow):
    code = """
    await node.sleep(1)
    {}["missing"]
    """
    more = "  - {id: c, type: catch, scope: [f]}\n"
    async with flow(fn_flow(code, more_nodes=more)) as h:
        h.inject("f", {"payload": 1})
        await h.advance(1)
        assert h.messages("c")[0]["error"]["message"] == "KeyError: 'missing' (line 2)"


async def test_call_later_timers_fire_and_are_cancelled_at_stop(flow):
    code = """
    node.call_later(30, node.send, {"payload": "timer"})
    node.call_later(3600, node.send, {"payload": "never"})
    """
    async with flow(fn_flow(code)) as h:
        await h.send("f", {"payload": 1})
        await h.advance(31)
        assert h.payloads("o0") == ["timer"]
        assert len(h.node("f")._timers) == 1
    assert len(h.node("f")._timers) == 0


# ---- check() ---------------------------------------------------------------------------------------------------

def _check(**config):
    return Function.check({"code": "return msg", "language": "python", "outputs": 1, "setup": "", "cleanup": "",
                           **config})


@pytest.mark.parametrize("config, path, words", [
    ({"code": "x = (1,\nreturn msg"}, ("code",), "line 1 of the code"),
    ({"code": "return msg\n  bad indent"}, ("code",), "line 2 of the code"),
    ({"code": "yield msg"}, ("code",), "yield"),
    ({"setup": "return 1"}, ("setup",), "outside function"),
    ({"cleanup": "def f(:"}, ("cleanup",), "line 1 of the cleanup"),
    ({"language": "javascript"}, ("language",), "type: function-js"),
    ({"outputs": ["a", "a"]}, ("outputs", 1), "used twice"),
    ({"outputs": -1}, ("outputs",), "negative"),
])
def test_check_problems(config, path, words):
    problems = _check(**config)
    assert any(p == path and words in text for p, text in problems), problems


def test_valid_code_has_no_problems():
    assert _check(code="import json\nawait node.sleep(1)\nreturn [msg, None]", outputs=2,
                  setup="X = 1\nawait node.sleep(0)") == []


async def test_syntax_error_fails_the_load(flow):
    with pytest.raises(FlowLoadError) as info:
        async with flow(fn_flow("return (")):
            pass
    assert "test-flow.yaml:" in str(info.value) and "line 1 of the code" in str(info.value)


def test_javascript_without_the_extra_names_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "py_mini_racer" else real(name, *a))
    (problem,) = _check(language="javascript")
    assert problem[0] == ("language",) and "need the meterflow[js] extra" in problem[1]
