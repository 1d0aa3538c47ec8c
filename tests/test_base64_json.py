"""base64 (encode/decode/auto with Node-RED's quirk) and json (both ways, errors to catch)."""

from __future__ import annotations

import pytest


def node_flow(type_name: str, **fields) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"""
nodes:
  - id: n
    type: {type_name}
{extra}    wires: [out]
  - {{id: out, type: junction}}
  - {{id: c, type: catch, scope: [n]}}
"""


async def run(flow, type_name: str, payloads: list, **fields) -> tuple[list, list]:
    """(payloads that came out, errors the catch node saw)."""
    async with flow(node_flow(type_name, **fields)) as h:
        for p in payloads:
            await h.send("n", {"payload": p})
        return h.payloads("out"), [m["error"] for m in h.messages("c")]


# ---- base64 -----------------------------------------------------------------------------------------

async def test_encode_any_value(flow):
    out, errors = await run(flow, "base64", ["héllo", b"\x00\xff", {"a": 1}, 5, True], action="encode")
    assert out == ["aMOpbGxv", "AP8=", "eyJhIjoxfQ==", "NQ==", "dHJ1ZQ=="]
    assert errors == []


async def test_decode_gives_a_utf8_string(flow):
    out, errors = await run(flow, "base64", ["aMOpbGxv", " aGVs\nbG8= ", b"aGk="], action="decode")
    assert out == ["héllo", "hello", "hi"]


async def test_decode_invalid_reaches_catch(flow):
    out, errors = await run(flow, "base64", ["not base64!", "abc", 5], action="decode")
    assert out == []
    assert [e["kind"] for e in errors] == ["parse", "parse", "parse"]
    assert errors[0]["message"] == "Invalid Base64 string"


async def test_auto_encodes_bytes_and_decodes_what_looks_like_base64(flow):
    out, _ = await run(flow, "base64", [b"hi", "aGk=", "test", "hello world", "abc"])
    # bytes -> text; "aGk=" and (quirk) "test" look like base64 -> bytes; the others are encoded
    assert out == ["aGk=", b"hi", b"\xb5\xeb-", "aGVsbG8gd29ybGQ=", "YWJj"]


async def test_auto_drops_other_types_and_missing_property(flow):
    async with flow(node_flow("base64")) as h:
        await h.send("n", {"payload": 5})
        await h.send("n", {"topic": "no payload"})
        assert h.messages("out") == [] and h.messages("c") == []


async def test_base64_property_path(flow):
    async with flow(node_flow("base64", property="body.data", action="encode")) as h:
        await h.send("n", {"body": {"data": "hi"}})
        assert h.messages("out")[0]["body"] == {"data": "aGk="}


async def test_round_trip_through_two_nodes(flow):
    text = """
nodes:
  - {id: enc, type: base64, action: encode, wires: [dec]}
  - {id: dec, type: base64, action: decode, wires: [out]}
  - {id: out, type: junction}
"""
    async with flow(text) as h:
        await h.send("enc", {"payload": "Smart Meter Texas ⚡"})
        assert h.payloads("out") == ["Smart Meter Texas ⚡"]


# ---- json -----------------------------------------------------------------------------------------------

async def test_json_auto_both_ways(flow):
    out, errors = await run(flow, "json", ['{"a": [1, 2.5]}', {"a": 1, "b": [True, None]}, 5, 5.0, None, False,
                                          b'{"x": "y"}', "[]"])
    assert out == [{"a": [1, 2.5]}, '{"a":1,"b":[true,null]}', "5", "5", "null", "false", {"x": "y"}, []]
    assert errors == []


async def test_json_action_obj_and_str_only_go_one_way(flow):
    out, _ = await run(flow, "json", ['{"a":1}', {"a": 1}], action="obj")
    assert out == [{"a": 1}, {"a": 1}]
    out, _ = await run(flow, "json", ['{"a":1}', {"a": 1}, b"{}"], action="str")
    assert out == ['{"a":1}', '{"a":1}', b"{}"]


async def test_json_pretty(flow):
    out, _ = await run(flow, "json", [{"a": 1, "b": [1]}], pretty="true")
    assert out == ['{\n    "a": 1,\n    "b": [\n        1\n    ]\n}']


async def test_json_stringify_as_javascript(flow):
    out, _ = await run(flow, "json", [{"nan": float("nan"), "inf": float("inf"), "big": 1e21, "f": 0.5,
                                       "buf": b"\x01\x02", "text": "é"}])
    assert out == ['{"nan":null,"inf":null,"big":1e+21,"f":0.5,"buf":{"type":"Buffer","data":[1,2]},"text":"é"}']


@pytest.mark.parametrize("bad", ["{bad", "NaN", "", "{'a': 1}", "[1,]"])
async def test_json_parse_error_reaches_catch(flow, bad):
    out, errors = await run(flow, "json", [bad])
    assert out == []
    (err,) = errors
    assert err["kind"] == "parse" and "invalid JSON" in err["message"]
    assert err["source"]["id"] == "n"


async def test_json_without_property_passes_on(flow):
    async with flow(node_flow("json", property="body.raw")) as h:
        await h.send("n", {"payload": "x"})
        await h.send("n", {"body": {"raw": '{"ok": true}'}})
        assert [m.get("body") for m in h.messages("out")] == [None, {"raw": {"ok": True}}]


async def test_json_error_kind_filter(flow):
    text = node_flow("json") + "  - {id: only-tls, type: catch, scope: [n], kinds: [tls]}\n"
    async with flow(text) as h:
        await h.send("n", {"payload": "{oops"})
        assert len(h.messages("c")) == 1
        assert h.messages("only-tls") == []
