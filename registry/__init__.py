"""pluggy hookspec, plugin manager, entry-point discovery and component lookups."""

from gptzoo.registry.hookspecs import hookimpl, hookspec
from gptzoo.registry.registry import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    PLUGINS_ENV,
    Entry,
    PluginError,
    Registry,
    TaskEntry,
    default_registry,
    make_registry,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "Entry",
    "PluginError",
    "Registry",
    "TaskEntry",
    "default_registry",
    "hookimpl",
    "hookspec",
    "make_registry",
]
