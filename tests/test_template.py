"""template: mustache.js escaping, msg/env/flow/global lookups, sections, output parsing, errors."""

from __future__ import annotations

import json

import pytest

from meterflow.nodes.template import Template, html_escape
from meterflow.testing import FlowLoadError


def one(template: str, **fields) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"""
nodes:
  - id: t
    type: template
{extra}    template: {json.dumps(template)}
    wires: [out]
  - {{id: out, type: junction}}
"""


async def render(flow, template: str, msg: dict, **fields):
    async with flow(one(template, **fields)) as h:
        await h.send("t", msg)
        return h.messages("out")[-1]


async def test_double_braces_escape_html_as_mustache_js(flow):
    out = await render(flow, "{{payload}}|{{{payload}}}|{{& payload}}", {"payload": "a/b<c>&\"'`="})
    assert out["payload"] == "a&#x2F;b&lt;c&gt;&amp;&quot;&#39;&#x60;&#x3D;|a/b<c>&\"'`=|a/b<c>&\"'`="


def test_html_escape_covers_mustache_js_entities():
    assert html_escape("<a href='x'>") == "&lt;a href&#x3D;&#39;x&#39;&gt;"


async def test_values_print_as_javascript(flow):
    msg = {"payload": {"n": 5.0, "f": 2.5, "t": True, "l": [1, 2], "o": {"a": 1}, "z": None, "zero": 0}}
    out = await render(flow, "{{payload.n}} {{payload.f}} {{payload.t}} {{payload.l}} {{payload.o}}"
                             " [{{payload.z}}] [{{payload.missing}}] {{payload.zero}} {{payload.l.length}}", msg)
    assert out["payload"] == "5 2.5 true 1,2 [object Object] [] [] 0 2"


async def test_nested_paths_and_list_index(flow):
    out = await render(flow, "{{payload.odrRead.registeredRead}} {{list.1}}",
                       {"payload": {"odrRead": {"registeredRead": 1234.5}}, "list": ["a", "b"]})
    assert out["payload"] == "1234.5 b"


async def test_env_flow_and_global_lookups(flow, monkeypatch):
    monkeypatch.setenv("MF_TEMPLATE_USER", "smt-user")
    text = one("{{env.MF_TEMPLATE_USER}}|{{flow.token}}|{{global.site.name}}|{{flow[memory].token}}"
               "|{{env.MF_NOT_SET}}|{{env.NR_NODE_ID}}")
    async with flow(text) as h:
        h.flow_context.set("token", "abc")
        h.global_context.set("site", {"name": "home"})
        await h.send("t", {"payload": None})
        assert h.messages("out")[0]["payload"] == "smt-user|abc|home|abc||t"


async def test_message_property_wins_over_context(flow):
    async with flow(one("{{flow.x}}")) as h:
        h.flow_context.set("x", "from context")
        await h.send("t", {"flow": {"x": "from msg"}})
        assert h.messages("out")[0]["payload"] == "from msg"


async def test_sections_lists_and_inverted(flow):
    template = "{{#items}}<{{name}}:{{payload}}>{{/items}}{{^none}}empty{{/none}}{{#flag}}yes{{/flag}}{{#zero}}no{{/zero}}"
    out = await render(flow, template, {"payload": "P", "items": [{"name": "a"}, {"name": "b"}], "none": [],
                                        "flag": True, "zero": 0})
    assert out["payload"] == "<a:P><b:P>emptyyes"


async def test_section_on_a_mapping_pushes_it(flow):
    out = await render(flow, "{{#payload}}{{a}}-{{b}}{{/payload}}", {"payload": {"a": 1, "b": 2}})
    assert out["payload"] == "1-2"


async def test_output_json_escapes_strings_and_parses(flow):
    template = '{"text": "{{{payload}}}", "n": {{n}}}'
    out = await render(flow, template, {"payload": "line1\nline2\\tab\t", "n": 3}, output="json")
    assert out["payload"] == {"text": "line1\nline2\\tab\t", "n": 3}


async def test_output_yaml(flow):
    out = await render(flow, "a: {{payload}}\nb: [1, 2]", {"payload": 7}, output="yaml")
    assert out["payload"] == {"a": 7, "b": [1, 2]}


async def test_plain_syntax_keeps_braces(flow):
    out = await render(flow, "{{payload}}", {"payload": "x"}, syntax="plain")
    assert out["payload"] == "{{payload}}"


async def test_field_can_target_a_nested_path_or_flow_context(flow):
    out = await render(flow, "hi {{payload}}", {"payload": "x"}, field="headers.greeting")
    assert out["headers"] == {"greeting": "hi x"} and out["payload"] == "x"
    async with flow(one("hi {{payload}}", field="flow.greeting")) as h:
        await h.send("t", {"payload": "y"})
        assert h.flow_context.get("greeting") == "hi y"


async def test_empty_template_uses_msg_template(flow):
    text = """
nodes:
  - {id: t, type: template, wires: [out]}
  - {id: out, type: junction}
"""
    async with flow(text) as h:
        await h.send("t", {"payload": "world", "template": "hello {{payload}}"})
        assert h.payloads("out") == ["hello world"]


async def test_bad_json_output_reaches_catch(flow):
    text = one("{not json {{payload}}", output="json") + "  - {id: c, type: catch, scope: [t]}\n"
    async with flow(text) as h:
        await h.send("t", {"payload": 1})
        assert h.messages("out") == []
        (err,) = h.messages("c")
        assert err["error"]["kind"] == "parse" and "JSON" in err["error"]["message"]


async def test_bad_msg_template_reaches_catch(flow):
    text = """
nodes:
  - {id: t, type: template, wires: [out]}
  - {id: out, type: junction}
  - {id: c, type: catch}
"""
    async with flow(text) as h:
        await h.send("t", {"template": "{{#open}} never closed"})
        assert h.messages("c")[0]["error"]["kind"] == "parse"


@pytest.mark.parametrize("template, words", [
    ("{{#a}}x", "never closed"),
    ("{{#a}}x{{/b}}", "close"),
    ("{{a", "unclosed"),
])
def test_syntax_errors_are_check_problems(template, words):
    problems = Template.check({"template": template, "field": "payload", "syntax": "mustache", "output": "str"})
    assert problems and problems[0][0] == ("template",) and words in problems[0][1]


def test_plain_json_template_is_checked():
    problems = Template.check({"template": "{bad", "field": "payload", "syntax": "plain", "output": "json"})
    assert problems and "JSON" in problems[0][1]


async def test_syntax_error_fails_the_load_with_a_position(flow):
    with pytest.raises(FlowLoadError) as info:
        async with flow(one("{{#a}}x")):
            pass
    assert "test-flow.yaml:" in str(info.value) and "mustache" in str(info.value)
