"""function-js: Node-RED JavaScript function code, run unchanged in V8 (mini-racer).

The seed exports' own function nodes are run here with the inputs the SMT flows give them;
the expected outputs were worked out from the JavaScript and checked against Node-RED 5.0.7
running the same code on the same inputs (basic auth, read request body, 2025 auth and
payload, status poll, the missing-context TypeError, the ReferenceError text).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("py_mini_racer")

from meterflow.flowfile import load_flow  # noqa: E402
from meterflow.testing import Harness  # noqa: E402

REF = Path(__file__).resolve().parent / "data" / "nodered"


def seed_code(year: int, node_id: str) -> str:
    nodes = json.loads((REF / f"smt-node-red-{year}.json").read_text())
    return next(n for n in nodes if n["id"] == node_id)["func"]


def q(text: str) -> str:
    """A YAML double-quoted scalar of ``text`` (JSON strings are valid YAML), ``${`` kept literal."""
    return json.dumps(text.replace("${", "$${"))


def flow_with(code: str, outputs: int = 1, extra: str = "", **fields) -> str:
    wires = "[out]" if outputs == 1 else "[" + ", ".join(f"[out{i}]" for i in range(outputs)) + "]"
    lines = ["meterflow: 1", "nodes:", "  - id: f", "    type: function-js", "    name: fn", f"    code: {q(code)}",
             f"    outputs: {outputs}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in fields.items()]
    lines.append(f"    wires: {wires}")
    outs = ["out"] if outputs == 1 else [f"out{i}" for i in range(outputs)]
    lines += [f"  - {{id: {o}, type: junction}}" for o in outs]
    lines += ["  - {id: c, type: catch, scope: [f], wires: [caught]}", "  - {id: caught, type: junction}"]
    return "\n".join(lines) + "\n" + extra


CREDS = {"username": "alice", "password": "s3cret", "esiid": "10443720001234567", "meternumber": "123456789LG"}


async def test_seed_create_basic_auth():
    async with Harness(text=flow_with(seed_code(2023, "f648f72153ea96e0"))) as h:
        await h.send("f", dict(CREDS, payload=1700000000000))
        assert h.payloads("out") == ["alice:s3cret"]


async def test_seed_read_request_and_result_bodies():
    async with Harness(text=flow_with(seed_code(2023, "36a80ba4bbfc77e8"))) as h:
        await h.send("f", dict(CREDS))
        assert h.payloads("out") == [{"trans_id": "", "requesterType": "RES", "requestorID": "alice",
                                      "reportFormat": "JSON", "ESIID": "10443720001234567",
                                      "MeterNumber": "123456789LG", "deliveryMode": "API",
                                      "SMTTermsandConditions": "Y"}]
    async with Harness(text=flow_with(seed_code(2023, "516ac1ce7f265c3a"))) as h:
        await h.send("f", dict(CREDS))
        assert h.payloads("out") == [{"trans_id": "123", "requestorID": "alice", "correlationId": "",
                                      "SMTTermsandConditions": "Y"}]


@pytest.mark.parametrize("year,node_id,auth", [(2023, "1c011e3881f6627e", "Basic YWxpY2U6czNjcmV0"),
                                               (2025, "c0b72d366335872b", "Bearer tok")])
async def test_seed_auth_and_payload_changes_the_stored_body(year, node_id, auth):
    async with Harness(text=flow_with(seed_code(year, node_id))) as h:
        h.flow_context.set("basicauth", "Basic YWxpY2U6czNjcmV0")
        h.flow_context.set("token_v2", "tok")
        h.flow_context.set("readjson", {"trans_id": "", "ESIID": "1044", "deliveryMode": "API"})
        msg = await h.send("f", {"payload": "true", "topic": ""})
        [out] = h.messages("out")
        assert out["auth"] == auth
        assert out["payload"] == {"trans_id": "123", "ESIID": "1044", "deliveryMode": "api"}
        assert out["_msgid"] == msg["_msgid"]
        # body was the object stored in flow context: Node-RED's context holds references
        assert h.flow_context.get("readjson") == {"trans_id": "123", "ESIID": "1044", "deliveryMode": "api"}


@pytest.mark.parametrize("year,node_id,auth", [(2023, "b7ca7efe1a6d81f3", "Basic x"), (2025, "a6779166c07768aa", "Bearer x")])
async def test_seed_status_poll_request(year, node_id, auth):
    async with Harness(text=flow_with(seed_code(year, node_id))) as h:
        h.flow_context.set("basicauth", "Basic x")
        h.flow_context.set("token_v2", "x")
        h.flow_context.set("resultjson", {"trans_id": "123", "requestorID": "alice", "correlationId": ""})
        h.flow_context.set("correlationId", "987654")
        msg = await h.send("f", {"payload": 1, "headers": {"content-length": "99"}})
        [out] = h.messages("out")
        assert out == {"headers": {"authorization": auth, "accept": "application/json"},
                       "payload": {"trans_id": "123", "requestorID": "alice", "correlationId": "987654"},
                       "_msgid": msg["_msgid"]}
        assert h.flow_context.get("resultjson.correlationId") == "987654"


@pytest.mark.parametrize("minute,pending,sent", [(55, None, True), (54, None, False), (55, "1", False),
                                                 (55, 1, False), (55, "0", True)])
async def test_seed_check_if_55_minute(minute, pending, sent):
    start = datetime(2025, 3, 4, 10, minute, 30).timestamp()  # local time, as the JavaScript Date reads it
    async with Harness(text=flow_with(seed_code(2023, "a8f15d236b6bc038")), start_time=start) as h:
        if pending is not None:
            h.flow_context.set("readrequested", pending)  # "1" == 1 in JavaScript: both mean pending
        await h.send("f", {"payload": 1})
        assert h.payloads("out") == (["true"] if sent else [])


@pytest.mark.parametrize("node_id", ["16d4575ad72eefe9", "d84304cf3f201861"])
async def test_seed_create_email_keeps_the_certificate_bytes(node_id):
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\xff\n-----END CERTIFICATE-----\n"
    async with Harness(text=flow_with(seed_code(2023, node_id))) as h:
        await h.send("f", {"payload": pem, "filename": "/ssl/fullchain.pem"})
        [out] = h.messages("out")
        assert out["attachments"] == {"filename": "fullchain.pem", "content": pem}
        assert out["topic"] == "Please update the SSL Certificate for USERID"
        assert out["payload"] == "Please add the updated certificate for user USERID"
        assert (out["from"], out["to"]) == ("email@email.com", "support@smartmetertexas.com")
        assert "filename" not in out  # a new message, not the input


async def test_seed_code_without_its_context_fails_to_catch_as_in_node_red():
    async with Harness(text=flow_with(seed_code(2025, "c0b72d366335872b"))) as h:
        await h.send("f", {"payload": 1})
        assert h.messages("out") == []
        [err] = h.messages("caught")
        assert err["error"]["message"] == "TypeError: Cannot set properties of undefined (setting 'trans_id')"
        assert err["error"]["source"]["id"] == "f"


async def test_return_shapes_per_output():
    code = """
    if (msg.payload === 1) return [msg, null];
    if (msg.payload === 2) return [null, [{payload: "a"}, {payload: "b"}]];
    if (msg.payload === 3) return null;
    return msg;
    """
    async with Harness(text=flow_with(code, outputs=2)) as h:
        for p in (1, 2, 3, 4):
            await h.send("f", {"payload": p})
        assert h.payloads("out0") == [1, 4]
        assert h.payloads("out1") == ["a", "b"]
        assert {m["_msgid"] for m in h.messages("out1")} == {h.messages("out1")[0]["_msgid"]}


async def test_node_send_clones_unless_told_not_to():
    code = """
    node.send({payload: "first", n: 1});
    var m = {payload: "before"};
    node.send(m); m.payload = "after";
    var k = {payload: "before"};
    node.send(k, false); k.payload = "after";
    return null;
    """
    async with Harness(text=flow_with(code)) as h:
        msg = await h.send("f", {"payload": 0})
        assert h.payloads("out") == ["first", "before", "after"]
        assert all(m["_msgid"] == msg["_msgid"] for m in h.messages("out"))


async def test_errors_warnings_status_and_done():
    code = """
    node.status({fill: "green", shape: "dot", text: "got " + msg.payload});
    if (msg.payload === "err") { node.error("bad input", msg); return null; }
    if (msg.payload === "log") { node.error("only logged"); return null; }
    if (msg.payload === "throw") { msg.seen = true; throw new Error("boom"); }
    return msg;
    """
    text = flow_with(code) + "  - {id: st, type: status, scope: [f], wires: [stat]}\n  - {id: stat, type: junction}\n"
    async with Harness(text=text) as h:
        for p in ("err", "log", "throw", "ok"):
            await h.send("f", {"payload": p})
        caught = h.messages("caught")
        assert [c["error"]["message"] for c in caught] == ["bad input", "Error: boom"]
        assert caught[1]["seen"] is True  # the message as the code left it, as Node-RED passes it
        assert [e[1] for e in h.errors] == ["only logged"]
        assert [m["status"]["text"] for m in h.messages("stat")][-1] == "got ok"
        assert h.payloads("out") == ["ok"]


async def test_complete_fires_after_done():
    explicit = "setTimeout(function () { node.send(msg); node.done(); }, 2000); return null;"
    extra = "  - {id: done, type: complete, scope: [f], wires: [completed]}\n  - {id: completed, type: junction}\n"
    async with Harness(text=flow_with(explicit, extra=extra)) as h:
        await h.send("f", {"payload": 1})
        assert h.messages("completed") == []  # node.done() in the code: not when the function returns
        await h.advance(2)
        assert h.payloads("out") == [1]
        assert h.payloads("completed") == [1]
    async with Harness(text=flow_with("return msg;", extra=extra)) as h:
        await h.send("f", {"payload": 2})
        assert h.payloads("completed") == [2]


async def test_time_limit_reaches_catch_as_a_timeout():
    async with Harness(text=flow_with("while (true) {}", timeout="100ms")) as h:
        await h.send("f", {"payload": 1})
        [err] = h.messages("caught")
        assert err["error"]["kind"] == "timeout"
        await h.send("f", {"payload": 2})  # the engine and V8 are still fine
        assert len(h.messages("caught")) == 2


async def test_timers_and_dates_run_on_the_engine_clock():
    code = """
    var t0 = Date.now();
    var n = 0;
    var iv = setInterval(function () {
        n += 1;
        node.send({payload: n, at: Date.now() - t0});
        if (n === 3) clearInterval(iv);
    }, 60000);
    var cancelled = setTimeout(function () { node.send({payload: "never"}); }, 1000);
    clearTimeout(cancelled);
    return null;
    """
    async with Harness(text=flow_with(code), start_time=1_700_000_000) as h:
        await h.send("f", {"payload": 0})
        await h.advance(3600)
        assert [(m["payload"], m["at"]) for m in h.messages("out")] == [(1, 60000), (2, 120000), (3, 180000)]


async def test_await_works():
    code = """
    await new Promise(function (resolve) { setTimeout(resolve, 5000); });
    msg.payload = "later";
    return msg;
    """
    async with Harness(text=flow_with(code)) as h:
        await h.send("f", {"payload": 1})
        assert h.messages("out") == []
        await h.advance(5)
        assert h.payloads("out") == ["later"]


async def test_context_api_bridges_to_meterflow_stores():
    code = """
    var count = context.get("count") || 0;
    context.set("count", count + 1);
    flow.set("deep.a.b", msg.payload);
    global.set("seen", (global.get("seen") || []).concat([msg.payload]));
    flow.set(["x", "y"], [1, 2]);
    flow.get("x", function (err, v) { msg.fromCallback = v; });
    msg.keys = flow.keys().sort();
    msg.multi = flow.get(["x", "y"]);
    msg.viaContext = context.flow.get("deep.a.b");
    flow.set("gone", undefined);
    return msg;
    """
    async with Harness(text=flow_with(code)) as h:
        h.flow_context.set("gone", 1)
        await h.send("f", {"payload": "p1"})
        await h.send("f", {"payload": "p2"})
        out = h.messages("out")[-1]
        assert h.node("f").context.get("count") == 2
        assert h.flow_context.get("deep") == {"a": {"b": "p2"}}
        assert h.global_context.get("seen") == ["p1", "p2"]
        assert (out["fromCallback"], out["multi"], out["viaContext"]) == (1, [1, 2], "p2")
        assert out["keys"] == ["deep", "x", "y"]  # "gone" was deleted by the first call
        assert h.flow_context.get("gone") is None


async def test_env_red_util_and_buffer(monkeypatch):
    monkeypatch.setenv("SMT_USER", "bob")
    code = """
    var copy = RED.util.cloneMessage(msg);
    copy.payload.a = 99;
    RED.util.setMessageProperty(msg, "deep.er", env.get("SMT_USER"));
    msg.same = RED.util.getMessageProperty(msg, "msg.payload.a");
    msg.nodeId = env.get("NR_NODE_ID") + "/" + node.id + "/" + node.name;
    msg.b64 = Buffer.from("alice:s3cret").toString("base64");
    msg.raw = Buffer.from("aGk=", "base64");
    msg.hex = Buffer.from([1, 255]).toString("hex");
    msg.isBuf = Buffer.isBuffer(msg.bin) && msg.bin.length;
    msg.text = msg.bin.toString();
    return msg;
    """
    async with Harness(text=flow_with(code)) as h:
        await h.send("f", {"payload": {"a": 1}, "bin": "héllo".encode()})
        [out] = h.messages("out")
        assert out["deep"] == {"er": "bob"}
        assert out["same"] == 1 and out["payload"] == {"a": 1}
        assert out["nodeId"] == "f/f/fn"
        assert (out["b64"], out["raw"], out["hex"]) == ("YWxpY2U6czNjcmV0", b"hi", "01ff")
        assert (out["isBuf"], out["text"]) == (6, "héllo")


async def test_initialize_and_finalize():
    code = "msg.payload = context.get('greeting') + ' ' + msg.payload; return msg;"
    async with Harness(text=flow_with(code, initialize="context.set('greeting', 'hello');",
                                      finalize="global.set('closed', true);")) as h:
        await h.send("f", {"payload": "world"})
        assert h.payloads("out") == ["hello world"]
    assert h.global_context.get("closed") is True


async def test_reference_error_names_the_line_and_template_literals_survive():
    code = "var who = `${msg.payload}!`;\nmsg.payload = who;\nif (who === 'x!') { missing.call(); }\nreturn msg;"
    async with Harness(text=flow_with(code)) as h:
        await h.send("f", {"payload": "hi"})
        await h.send("f", {"payload": "x"})
        assert h.payloads("out") == ["hi!"]
        # Node-RED 5.0.7 gives exactly this text, the name twice included (checked against it)
        assert h.messages("caught")[0]["error"]["message"] == \
            "ReferenceError: ReferenceError: missing is not defined (line 3, col 21)"


def test_check_reports_syntax_errors_with_their_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(flow_with("var a = 1;\nvar b = ;\nreturn msg;"))
    spec = load_flow(str(path))
    [problem] = [p for p in spec.errors]
    assert "JavaScript SyntaxError: Unexpected token ';' (line 2)" in problem.message
    assert problem.line == 6  # the code field


async def test_many_calls_are_quick():
    import time

    async with Harness(text=flow_with("msg.payload = msg.payload * 2; return msg;")) as h:
        t = time.perf_counter()
        for i in range(300):
            h.inject("f", {"payload": i})
        await h.settle()
        assert h.payloads("out")[-1] == 598
        assert time.perf_counter() - t < 3  # about 0.3 ms a call
