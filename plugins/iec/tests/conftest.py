"""The shared real-service fixtures (mosquitto, influxd, an HTTP recorder) from tests/services.py."""

import sys
from pathlib import Path

_SHARED = str(Path(__file__).resolve().parents[3] / "tests")
if _SHARED not in sys.path:
    sys.path.insert(0, _SHARED)

pytest_plugins = ["services"]
