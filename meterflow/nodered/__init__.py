"""Node-RED compatibility: import ``flows.json`` (and ``flows_cred.json``) as meterflow YAML, export back.

* :mod:`.importer` — flows.json -> flow YAML text (readable ids, the Node-RED id kept in a comment)
* :mod:`.exporter` — flow YAML -> flows.json that the Node-RED editor loads
* :mod:`.credentials` — decrypt ``flows_cred.json`` (AES-256-CTR, key = SHA-256 of the credentialSecret)
* :mod:`.cli` — ``meterflow import`` and ``meterflow export``

Which Node-RED type becomes which meterflow type is listed in ``docs/node-red.md``.
"""
