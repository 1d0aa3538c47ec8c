"""The plugin manager: built-in node packs plus entry points in the ``meterflow`` group.

``METERFLOW_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none), which
helps when a broken third-party pack needs to be ruled out.
"""

from __future__ import annotations

import logging
import os
from functools import cache

import pluggy

from . import hookspecs

hookimpl = pluggy.HookimplMarker("meterflow")
log = logging.getLogger("meterflow.plugins")

_entry_points: dict = {}  # plugin name -> its entry point

#: Built-in plugin modules, registered exactly as a third-party pack would be.
DEFAULT_PLUGINS = ("meterflow.nodes", "meterflow.credentials")


class Registry:
    """Node types by name, with the plugin each came from."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.types: dict[str, type] = {}
        self.origin: dict[str, str] = {}
        self.substitutions: dict[str, object] = {}
        for impl in pm.hook.meterflow_node_types.get_hookimpls():
            plugin = pm.get_name(impl.plugin) or "?"
            for cls in impl.function() or ():
                if cls.type in self.types:
                    log.warning("node type %r from %s replaces the one from %s", cls.type, plugin, self.origin[cls.type])
                self.types[cls.type] = cls
                self.origin[cls.type] = plugin
        for mapping in pm.hook.meterflow_substitutions():
            self.substitutions.update(mapping or {})

    def plugin_label(self, type_name: str) -> str:
        """Where a node type comes from, with the distribution's name for installed packs."""
        name = self.origin[type_name]
        ep = _entry_points.get(name)
        if ep is not None and ep.dist is not None:
            return f"{ep.dist.name} ({ep.value})"
        return name


def make_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    import importlib

    pm = pluggy.PluginManager("meterflow")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=f"{name} (built-in)")
    if load_entry_points:
        from importlib.metadata import entry_points

        only = os.environ.get("METERFLOW_LOAD_PLUGINS")
        wanted = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
        for ep in entry_points(group="meterflow"):
            if wanted is not None and ep.name not in wanted:
                continue
            # Named by the entry point; the distribution's name is looked up only when shown,
            # because reading package metadata costs milliseconds at every start.
            label = f"{ep.name} ({ep.value})"
            try:
                pm.register(ep.load(), name=label)
                _entry_points[label] = ep
            except Exception as e:  # a broken third-party pack must not take the engine down
                log.error("plugin %s failed to load: %s: %s", label, type(e).__name__, e)
    return pm


@cache
def registry() -> Registry:
    return Registry(make_manager())
