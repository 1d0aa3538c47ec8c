"""How a plugin author tests a node: the Harness runs a flow on a virtual clock."""

from meterflow.testing import Harness

FLOW = """
meterflow: 1
nodes:
  - {id: delta, type: kwh-delta, wires: [out]}
  - {id: out, type: junction}
  - {id: oops, type: catch, kinds: [parse], wires: [errors]}
  - {id: errors, type: junction}
"""


async def test_deltas_and_meter_reset():
    async with Harness(text=FLOW) as h:
        for reading in (100.0, 101.5, 103.0, 2.0):
            await h.send("delta", {"payload": reading})
        assert [m["delta"] for m in h.messages("out")] == [0.0, 1.5, 1.5, 2.0]


async def test_non_numeric_reading_reaches_catch():
    async with Harness(text=FLOW) as h:
        await h.send("delta", {"payload": "n/a"})
        [err] = h.messages("errors")
        assert err["error"]["kind"] == "parse"
        assert "expected a number" in err["error"]["message"]
