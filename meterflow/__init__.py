"""meterflow: a Node-RED-compatible flow engine."""
__version__ = "0.1.0"
