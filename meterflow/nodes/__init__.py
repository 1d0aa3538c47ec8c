"""The built-in node types, registered through the same hook a third-party pack uses.

Each module in this package that defines ``NODE_TYPES`` (a list of Node subclasses)
contributes them; adding a node type is adding a module.
"""

from __future__ import annotations

import pkgutil
from importlib import import_module

from ..plugins import hookimpl


@hookimpl
def meterflow_node_types():
    types = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        mod = import_module(f"{__name__}.{info.name}")
        types.extend(getattr(mod, "NODE_TYPES", ()))
    return types
