"""meterflow-iec: Israel Electric Corporation (IEC) nodes for meterflow, and a local IEC sandbox."""
