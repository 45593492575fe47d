"""The shipped presets: configs/ is package data (gptzoo.configs), so ``gptzoo train tiny`` and
``gptzoo describe hf/qwen3`` work from an installed wheel as from a checkout."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from gptzoo.core import ConfigError


def presets_folder() -> Path:
    """configs/, wherever the package was installed from."""
    return Path(str(resources.files("gptzoo.configs")))


def preset_names() -> list[str]:
    """Every shipped TOML config by name: ``tiny``, ``hf/qwen3``, ``ablations/attention``."""
    root = presets_folder()
    return sorted(path.relative_to(root).with_suffix("").as_posix() for path in root.rglob("*.toml"))


def find_config(text: str | Path) -> Path:
    """A path that exists is itself; anything else is a preset's name (see find_preset)."""
    path = Path(text)
    return path if path.exists() else find_preset(str(text))


def find_preset(name: str) -> Path:
    """A preset's file by name, with or without .toml and, where only one preset has that name, without its
    folder (``qwen3`` is ``hf/qwen3``)."""
    stem = name.removesuffix(".toml")
    names = preset_names()
    same_stem = [n for n in names if n.rpartition("/")[2] == stem]
    if stem in names or len(same_stem) == 1:
        return presets_folder() / f"{stem if stem in names else same_stem[0]}.toml"
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.5)
    hint = f"closest presets: {', '.join(close)}; " if close else ""
    raise ConfigError(f"{name}: no such config file, nor a shipped preset; {hint}`gptzoo presets` lists them")
