"""Certificate lifecycle: inspection, `meterflow cert check`, the cert-check node."""

import datetime as dt
import os
import time

import pytest
import trustme

from meterflow import certs
from meterflow.cli import main
from meterflow.testing import Harness


@pytest.fixture
def ca():
    return trustme.CA()


def write_pair(ca, tmp_path, name, host="meter.example.org", days=60):
    cert = ca.issue_cert(host, not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    c, k = tmp_path / f"{name}-fullchain.pem", tmp_path / f"{name}-privkey.pem"
    cert.cert_chain_pems[0].write_to_path(str(c))
    for extra in cert.cert_chain_pems[1:]:
        with open(c, "ab") as f:
            f.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(k))
    return c, k


def test_inspect_reports_expiry_wildcard_key_and_fingerprint(ca, tmp_path):
    c, k = write_pair(ca, tmp_path, "a", days=0.5)
    info = certs.inspect(c, k)
    assert info.expires_soon and info.key_matches and not info.wildcard
    assert info.names == ["meter.example.org"]
    assert len(info.fingerprint) == 64 and info.fingerprint == certs.fingerprint(c)
    w, wk = write_pair(ca, tmp_path, "w", host="*.example.org")
    _, other_key = write_pair(ca, tmp_path, "o")
    info = certs.inspect(w, other_key)
    assert info.wildcard and info.key_matches is False
    assert "wildcard subject (SMT needs a specific domain)" in info.problems


def test_cli_cert_check_exit_codes(ca, tmp_path, capsys):
    c, k = write_pair(ca, tmp_path, "a")
    assert main(["cert", "check", str(c), "--key", str(k)]) == 0
    assert "days left" in capsys.readouterr().out
    assert main(["cert", "check", str(c), "--days", "90"]) == 1
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert main(["cert", "check", str(tmp_path / "junk.pem")]) == 1
    assert "is not a PEM certificate" in capsys.readouterr().err
    assert main(["cert", "check", str(tmp_path / "missing.pem")]) == 1
    assert "cannot read certificate" in capsys.readouterr().err


def flow(c, k, pc, pk, state):
    return f"""meterflow: 1
context: {{store: file, dir: {state}}}
nodes:
  - id: cert
    type: cert-check
    cert: {c}
    key: {k}
    previous_cert: {pc}
    previous_key: {pk}
    wires: {{info: [info], changed: [changed]}}
  - {{id: info, type: junction}}
  - {{id: changed, type: junction}}
"""


async def test_node_announces_each_new_fingerprint_once_and_rotates(ca, tmp_path):
    c, k = write_pair(ca, tmp_path, "cur", days=80)
    pc, pk = write_pair(ca, tmp_path, "prev", days=0.5)  # previous expires within a day
    text = flow(c, k, pc, pk, tmp_path / "state")
    async with Harness(text=text, start_time=time.time()) as h:
        await h.send("cert", {"payload": None})
        # first sight is the baseline; the previous pair was rotated from the current one
        assert h.messages("changed") == []
        assert certs.fingerprint(pc) == certs.fingerprint(c)
        assert os.stat(pk).st_mode & 0o777 == 0o600
        assert h.messages("info")[0]["payload"]["rotated"] is True
        await h.send("cert", {"payload": None})
        assert h.messages("changed") == []
        # a renewal (new fullchain.pem on disk) is announced once, with the file to attach
        write_pair(ca, tmp_path, "cur", days=90)
        await h.send("cert", {"payload": None})
        await h.send("cert", {"payload": None})
        [m] = h.messages("changed")
        assert m["payload"]["fingerprint"] == certs.fingerprint(c) and m["filename"] == str(c)
    async with Harness(text=text, start_time=time.time()) as h:  # the memory survives a restart
        await h.send("cert", {"payload": None})
        assert h.messages("changed") == []
