"""file-in / file-out on real files under tmp_path: formats, lines, append/write/delete, errors of kind io."""

from __future__ import annotations

import os
import stat

import pytest

from meterflow.nodes.file import FileOut


def file_flow(type_name: str, **fields) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"""
nodes:
  - id: n
    type: {type_name}
{extra}    wires: [out]
  - {{id: out, type: junction}}
  - {{id: c, type: catch, scope: [n]}}
"""


# ---- file-in ------------------------------------------------------------------------------------

async def test_read_text_bytes_and_filename(flow, tmp_path):
    path = tmp_path / "reading.txt"
    path.write_bytes("kWh: 12.5 é\n".encode())
    async with flow(file_flow("file-in", filename=f'"{path}"')) as h:
        await h.send("n", {"payload": None})
        (m,) = h.messages("out")
        assert m["payload"] == "kWh: 12.5 é\n" and m["filename"] == str(path)
    async with flow(file_flow("file-in", filename=f'"{path}"', format="bytes")) as h:
        await h.send("n", {})
        assert h.payloads("out") == ["kWh: 12.5 é\n".encode()]


async def test_filename_from_msg_and_other_encoding(flow, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café".encode("latin-1"))
    async with flow(file_flow("file-in", encoding="latin-1")) as h:
        await h.send("n", {"filename": str(path)})
        assert h.payloads("out") == ["café"]


async def test_filename_types(flow, tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("X")
    monkeypatch.setenv("MF_FILE_TEST", str(path))
    async with flow(file_flow("file-in", filename="MF_FILE_TEST", filename_type="env")) as h:
        await h.send("n", {})
        assert h.payloads("out") == ["X"]
    async with flow(file_flow("file-in", filename="where.file", filename_type="msg")) as h:
        await h.send("n", {"where": {"file": str(path)}})
        assert h.payloads("out") == ["X"]
    async with flow(file_flow("file-in", filename="cert_path", filename_type="flow")) as h:
        h.flow_context.set("cert_path", str(path))
        await h.send("n", {})
        assert h.payloads("out") == ["X"]


async def test_relative_paths_are_relative_to_the_flow_file(flow, tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "a.pem").write_text("PEM")
    async with flow(file_flow("file-in", filename="certs/a.pem"), file=str(tmp_path / "smt.yaml")) as h:
        await h.send("n", {})
        assert h.payloads("out") == ["PEM"]
        assert h.messages("out")[0]["filename"] == "certs/a.pem"


async def test_lines_mode_sends_one_message_per_line_with_parts(flow, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("a\nb\n\nc\n")
    async with flow(file_flow("file-in", filename=f'"{path}"', format="lines")) as h:
        sent = await h.send("n", {"topic": "t", "payload": None, "keep": 1})
        msgs = h.messages("out")
        assert [m["payload"] for m in msgs] == ["a", "b", "", "c"]
        assert all(m["topic"] == "t" and m["filename"] == str(path) and "keep" not in m for m in msgs)
        assert [m["parts"]["index"] for m in msgs] == [0, 1, 2, 3]
        assert [m["parts"].get("count") for m in msgs] == [None, None, None, 4]
        assert {m["parts"]["id"] for m in msgs} == {sent["_msgid"]}
        assert msgs[0]["parts"]["ch"] == "\n" and msgs[0]["parts"]["type"] == "string"


async def test_lines_mode_all_props_and_no_trailing_newline(flow, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("x\ny")
    async with flow(file_flow("file-in", filename=f'"{path}"', format="lines", all_props="true")) as h:
        await h.send("n", {"payload": None, "keep": 1})
        msgs = h.messages("out")
        assert [(m["payload"], m["keep"]) for m in msgs] == [("x", 1), ("y", 1)]
        assert msgs[-1]["parts"]["count"] == 2


async def test_lines_feed_a_switch_tail(flow, tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("1\n2\n3\n4\n")
    text = f"""
nodes:
  - {{id: n, type: file-in, filename: "{path}", format: lines, wires: [sw]}}
  - {{id: sw, type: switch, rules: [{{op: tail, value: 1}}], wires: [[out]]}}
  - {{id: out, type: junction}}
"""
    async with flow(text) as h:
        await h.send("n", {})
        assert h.payloads("out") == ["4"]


async def test_missing_file_is_an_io_error_and_send_error_sends_a_copy(flow, tmp_path):
    path = tmp_path / "nope.txt"
    async with flow(file_flow("file-in", filename=f'"{path}"')) as h:
        await h.send("n", {"payload": "x"})
        assert h.messages("out") == []
        err = h.messages("c")[0]["error"]
        assert err["kind"] == "io" and err["code"] == "ENOENT" and err["path"] == str(path)
        assert "cannot read" in err["message"]
    async with flow(file_flow("file-in", filename=f'"{path}"', send_error="true")) as h:
        await h.send("n", {"payload": "x", "topic": "t"})
        (copy,) = h.messages("out")
        assert "payload" not in copy and copy["topic"] == "t" and copy["error"]["code"] == "ENOENT"
        assert len(h.messages("c")) == 1


async def test_no_filename_is_an_io_error(flow):
    async with flow(file_flow("file-in")) as h:
        await h.send("n", {"payload": 1})
        assert h.messages("c")[0]["error"]["kind"] == "io"


# ---- file-out -------------------------------------------------------------------------------------

async def test_append_is_the_default_and_adds_newlines(flow, tmp_path):
    path = tmp_path / "log.txt"
    async with flow(file_flow("file-out", filename=f'"{path}"')) as h:
        for p in ("one", 2, 2.0, True, {"a": [1]}, None):
            await h.send("n", {"payload": p})
        await h.send("n", {"topic": "no payload: nothing written, nothing sent"})
        assert path.read_text() == 'one\n2\n2\ntrue\n{"a":[1]}\nnull\n'
        assert len(h.messages("out")) == 6  # each written message is passed on


async def test_write_replaces_and_bytes_get_no_newline(flow, tmp_path):
    path = tmp_path / "state.bin"
    path.write_text("old contents")
    async with flow(file_flow("file-out", filename=f'"{path}"', action="write")) as h:
        await h.send("n", {"payload": b"\x00\x01"})
        assert path.read_bytes() == b"\x00\x01"
        await h.send("n", {"payload": "text"})
        assert path.read_text() == "text\n"


async def test_write_without_newline_and_filename_from_msg(flow, tmp_path):
    path = tmp_path / "x.json"
    async with flow(file_flow("file-out", action="write", add_newline="false")) as h:
        await h.send("n", {"filename": str(path), "payload": {"kwh": 1.5}})
        assert path.read_text() == '{"kwh":1.5}'


async def test_create_dirs(flow, tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    async with flow(file_flow("file-out", filename=f'"{path}"')) as h:
        await h.send("n", {"payload": "x"})
        err = h.messages("c")[0]["error"]
        assert err["kind"] == "io" and err["code"] == "ENOENT"
    async with flow(file_flow("file-out", filename=f'"{path}"', create_dirs="true")) as h:
        await h.send("n", {"payload": "x"})
        assert path.read_text() == "x\n"


async def test_atomic_write_keeps_permissions_and_leaves_no_temp_files(flow, tmp_path):
    path = tmp_path / "reading.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    async with flow(file_flow("file-out", filename=f'"{path}"', action="write", atomic="true")) as h:
        await h.send("n", {"payload": {"v": 1}})
        await h.send("n", {"payload": {"v": 2}})
    assert path.read_text() == '{"v":2}\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reading.json"]


async def test_atomic_write_to_a_missing_folder_fails_cleanly(flow, tmp_path):
    path = tmp_path / "missing" / "f.txt"
    async with flow(file_flow("file-out", filename=f'"{path}"', action="write", atomic="true")) as h:
        await h.send("n", {"payload": "x"})
        assert h.messages("c")[0]["error"]["kind"] == "io"
        assert h.messages("out") == []


async def test_delete(flow, tmp_path):
    path = tmp_path / "gone.txt"
    path.write_text("x")
    async with flow(file_flow("file-out", filename=f'"{path}"', action="delete")) as h:
        await h.send("n", {"payload": 1})
        assert not path.exists() and len(h.messages("out")) == 1
        await h.send("n", {"payload": 2})  # already gone: an io error, as Node-RED
        err = h.messages("c")[0]["error"]
        assert err["kind"] == "io" and err["code"] == "ENOENT" and "cannot delete" in err["message"]


async def test_write_then_read_back(flow, tmp_path):
    path = tmp_path / "round.txt"
    text = f"""
nodes:
  - {{id: w, type: file-out, filename: "{path}", action: write, wires: [r]}}
  - {{id: r, type: file-in, filename: "{path}", wires: [out]}}
  - {{id: out, type: junction}}
"""
    async with flow(text) as h:
        await h.send("w", {"payload": "hello"})
        assert h.payloads("out") == ["hello\n"]


@pytest.mark.parametrize("config, where", [
    ({"action": "append", "atomic": True}, ("atomic",)),
    ({"encoding": "no-such-codec"}, ("encoding",)),
])
def test_check_problems(config, where):
    problems = FileOut.check({"encoding": "utf-8", "action": "write", "atomic": False, **config})
    assert [p for p, _ in problems] == [where]
