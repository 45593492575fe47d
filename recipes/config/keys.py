"""Dotted keys (``model.positional.name``) into nested tables: read one, set one, list them all.

``set`` is ``--set``'s own rule: a new component ``name`` replaces the component's spec, so a
sweep's axis, an ``extends`` and a ``--set`` of the same key mean the same. Hugging Face's
config.json has no components: ``set(..., components=False)`` sets its plain tables.
"""

from __future__ import annotations

from typing import Any

from gptzoo.core import ConfigError

MISSING: Any = object()  # what ``get`` returns for a key that is not there, unless told otherwise


def get(node: Any, dotted: str, default: Any = MISSING) -> Any:
    """The value at ``dotted``: table keys, list indices and object attributes in turn; ``default`` when absent."""
    for part in dotted.split("."):
        if isinstance(node, dict):
            if part not in node:
                return default
            node = node[part]
        elif isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                return default
            node = node[int(part)]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            return default
    return node


def set(data: dict[str, Any], dotted: str, value: Any, source: str | None = None, *, components: bool = True) -> None:
    """Set ``value`` at ``dotted`` in place, making the missing tables; ``source`` names it in errors.

    With ``components``, as ``--set dotted=value`` does: a component written by name only becomes
    ``{"name": ...}``, and a new ``name`` replaces the component's spec.
    """
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if components and isinstance(child, str):  # a component written by name only
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source or f'key {dotted!r}'}: '{key}' is a value, not a table")
        node[key] = child
        node = child
    if components and last == "name" and names_another_plugin(node, value):
        node.clear()
    node[last] = value


def names_another_plugin(spec: dict[str, Any], name: Any) -> bool:
    """Naming another plugin drops the old one's params: they would mean nothing to the new one."""
    return name is not None and spec.get("name") not in (None, name)


def flatten(table: dict[str, Any], prefix: str = "", *, keep_empty: bool = True) -> dict[str, Any]:
    """Dotted keys down to the leaves: ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``.

    Lists are leaves. An empty table is a leaf with ``keep_empty`` (a value to set), else it vanishes.
    """
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (value or not keep_empty):
            flat.update(flatten(value, f"{dotted}.", keep_empty=keep_empty))
        else:
            flat[dotted] = value
    return flat
