"""Reading a fine-tuning config: a TOML (which may extend another), a preset, or a fine-tuned run's
config.json; then the command line's shorthand flags and ``--set`` overrides; then validation, with
errors naming the file and field, or the flag that set the field."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gptzoo.core import ConfigError, config_error
from gptzoo.recipes.config import keys
from gptzoo.recipes.config.finetune import C
from gptzoo.recipes.config.presets import find_config, find_preset
from gptzoo.recipes.config.reading import apply_overrides, read_toml
from gptzoo.recipes.runs.files import read_json


def read_finetune_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw table of a fine-tuning TOML (or preset, or a fine-tuned run's config.json or folder) and its name."""
    path = find_config(path)
    if path.is_dir() or path.suffix == ".json":
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"{file}: no such config file")
        saved = read_json(file, ConfigError)
        if not isinstance(saved, dict) or not isinstance(saved.get("finetune"), dict):
            raise ConfigError(f"{file}: not a fine-tuned run's config (it has no 'finetune' table)")
        return dict(saved["finetune"].get("config", {})), str(file)
    return read_toml(path, find_base=find_preset), str(path)


def load_finetune_config(
    kind: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: dict[str, tuple[str, Any]] | None = None,
    flag_names: dict[str, str] | None = None,
) -> C:
    """Read a fine-tuning config (``path``: a TOML, which may extend another, a preset name, or a fine-tuned run),
    apply the shorthand ``flags`` given (dotted field -> (flag, value)), then the ``key=value`` ``overrides``; validate.

    Errors name the file and the dotted field, or the flag when one set the field; ``flag_names`` (dotted field ->
    flag, for every shorthand the command has) name the flag that would set a field a check asks for."""
    data, source = read_finetune_file(path) if path is not None else ({}, "the command line")
    flags = flags or {}
    for dotted, (_, value) in flags.items():
        keys.set(data, dotted, value, flags[dotted][0])
    data = apply_overrides(data, list(overrides))
    if not isinstance(data.get("data"), dict) or "path" not in data["data"]:
        raise ConfigError(f"{source}: give the data file: --data PATH, or data.path in the config")
    return validate_finetune_config(kind, data, source, flags, flag_names)


def validate_finetune_config(
    kind: type[C],
    data: dict[str, Any],
    source: str,
    flags: dict[str, tuple[str, Any]] | None = None,
    flag_names: dict[str, str] | None = None,
) -> C:
    """``data`` validated as a ``kind`` config; a ConfigError names ``source`` and the fields (or flags) at fault."""
    flags = flags or {}
    context = {"given": {k: flag for k, (flag, _) in flags.items()}, "flags": flag_names or {}}
    try:
        return kind.model_validate(data, context=context)
    except ValidationError as err:
        raise finetune_config_error(err, source, kind, flags) from None


def finetune_config_error(
    err: ValidationError, source: str, kind: type[BaseModel], flags: dict[str, tuple[str, Any]]
) -> ConfigError:
    """core's config_error, unless a flag is at fault: then a field a flag set is named by the flag and its value
    (``--lr nan: ...``), a check across fields says what it says (its message names the fields as they were
    written), and the flag's problems come first."""
    by_flag, others = [], []
    for e in err.errors():
        dotted = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if dotted in flags:
            flag, value = flags[dotted]
            by_flag.append(f"{flag} {value!r}: {message}")
        elif e["type"] == "value_error" and any(flag in message for flag, _ in flags.values()):
            by_flag.append(message)
        else:
            others.append(f"{dotted}: {message}")
    return ConfigError("\n  ".join(by_flag + others)) if by_flag else config_error(err, source, kind)
