"""meterflow: a Node-RED-compatible flow engine."""
__version__ = "0.1.0"

from .plugins import hookimpl  # noqa: E402  - the marker plugin authors import

__all__ = ["hookimpl", "__version__"]
