"""The plugin contract is its documentation: these fail when docs and code drift apart."""

import inspect
import re
import sys
from pathlib import Path

from meterflow import hookspecs
from meterflow.plugins import registry

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"


def test_every_hook_is_documented_with_its_signature():
    text = DOCS.read_text()
    documented = set(re.findall(r"^### `(meterflow_\w+)\((.*?)\)`", text, re.M))
    specs = {
        (name, ", ".join(inspect.signature(fn).parameters))
        for name, fn in vars(hookspecs).items()
        if name.startswith("meterflow_") and callable(fn)
    }
    assert specs == documented


def test_every_node_type_documents_itself():
    reg = registry()
    assert reg.types, "no node types registered"
    for name, cls in reg.types.items():
        assert cls.summary, f"{name}: no summary"
        assert (sys.modules[cls.__module__].__doc__ or "").strip(), f"{name}: module has no docstring"
        for field, spec in cls.schema.items():
            assert spec.doc, f"{name}.{field}: field has no doc"
            for sub, sub_spec in (spec.fields or (spec.item.fields if spec.item and spec.item.fields else {}) or {}).items():
                assert sub_spec.doc, f"{name}.{field}.{sub}: field has no doc"


def test_example_pack_is_installed_and_listed(capsys):
    from meterflow.cli import main

    assert main(["nodes"]) == 0
    out = capsys.readouterr().out
    assert "kwh-delta" in out and "meterflow-example" in out
