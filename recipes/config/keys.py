"""Dotted keys (``model.positional.name``) into nested tables: read one, set one, list them all.

``set`` is ``--set``'s own rule (reading.set_override): a new component ``name`` replaces
the component's spec, so a sweep's axis means what the same ``--set`` means.
"""

from __future__ import annotations

from typing import Any

from gptzoo.recipes.config.reading import set_override

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


def set(data: dict[str, Any], dotted: str, value: Any, source: str | None = None) -> None:
    """Set ``value`` at ``dotted`` in place, as ``--set dotted=value`` would; ``source`` names it in errors."""
    set_override(data, dotted.split("."), value, source or f"key {dotted!r}")


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
