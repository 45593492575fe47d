"""Reading a TOML config: ``extends`` (a base read first, this file's tables merged over it) and
``--set key=value`` overrides applied after it, both with the rule that naming another plugin
replaces a component's spec."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptzoo.core import ConfigError
from gptzoo.recipes.config import keys


def read_toml(path: str | Path, find_base: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """Read a TOML config. A top-level ``extends = "base.toml"`` reads the base first (a path relative to
    this file, else whatever ``find_base`` finds for the name, such as a shipped preset; it may extend in
    turn) and merges this file's tables over it (see merge_config)."""
    return _read_extending(Path(path), find_base, [])


def _read_extending(path: Path, find_base: Callable[[str], Path] | None, extended_by: list[Path]) -> dict[str, Any]:
    data = _read_toml_file(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(
            f"{path}: extends = {base!r}: give the base config's path (relative to this file) as a string"
        )
    base_path = path.parent / base
    if not base_path.is_file():
        if find_base is None:
            raise ConfigError(f"{path}: extends = {base!r}: no such file ({base_path})")
        try:
            base_path = find_base(base)
        except ConfigError as err:
            raise ConfigError(f"{path}: extends = {base!r}: {err}") from None
    chain = [*extended_by, path.resolve()]
    if base_path.resolve() in chain:
        cycle = chain[chain.index(base_path.resolve()) :] + [base_path.resolve()]
        raise ConfigError(f"{path}: extends = {base!r} makes a cycle: {' -> '.join(map(str, cycle))}")
    return merge_config(_read_extending(base_path, find_base, chain), data)


def _read_toml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: a folder, not a TOML file" if path.is_dir() else f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a config: its tables or arrays nest too deeply to read") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over``'s values over ``base``'s, table by table; lists and values replace. A component table that
    names another plugin replaces the base's spec whole, as a ``name`` override does (apply_overrides)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        old = merged.get(key)
        if isinstance(old, str) and isinstance(value, dict):
            old = {"name": old}  # a component written by name only
        if isinstance(old, dict) and isinstance(value, dict) and not keys.names_another_plugin(old, value.get("name")):
            merged[key] = merge_config(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> ("a.b.c", value); the value is read as TOML, else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: write it as key=value, for example model.attention.name=sdpa")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied.

    Setting a component's ``name`` to another plugin replaces the whole spec: the old
    plugin's params would mean nothing to the new one. Give the new params with more overrides.
    """
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        keys.set(data, key, value, f"override {text!r}")
    return data
