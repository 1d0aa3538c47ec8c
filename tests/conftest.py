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
