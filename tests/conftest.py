import pytest

from meterflow.testing import Harness

# Real services (mosquitto, influxd, aiosmtpd, an HTTP recorder), started once per session.
pytest_plugins = ["services"]


@pytest.fixture
def flow():
    """``async with flow(text) as h:`` — a Harness on a virtual clock."""
    def make(text: str, **kw) -> Harness:
        if not text.lstrip().startswith("meterflow:"):
            text = "meterflow: 1\n" + text
        return Harness(text=text, **kw)

    return make


@pytest.fixture
def private_store(tmp_path, monkeypatch):
    """Never touch ~/.config: the test gets its own credential store and key file (in the
    returned directory)."""
    monkeypatch.setenv("METERFLOW_CREDENTIALS", str(tmp_path / "cfg" / "credentials.json"))
    monkeypatch.delenv("METERFLOW_KEY", raising=False)
    monkeypatch.delenv("METERFLOW_KEY_FILE", raising=False)
    return tmp_path / "cfg"
