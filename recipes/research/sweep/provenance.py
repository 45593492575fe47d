"""Which plugin, distribution, version and source file provided each component of a run, and what changed since."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from gptzoo.recipes.config import keys
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.registry import Registry


def provenance(config: RunConfig, registry: Registry | None) -> dict[str, dict[str, str]]:
    """Who provides each component of ``config`` (as the run folder's manifest records it), plus a
    sha256 of the source file that defines each implementation, so edited plugin code shows too."""
    from gptzoo.recipes.runs.manifest import components_of
    from gptzoo.registry import default_registry

    found = components_of(config, registry or default_registry())
    for path, entry in found.items():
        entry["code"] = _source_digest(keys.get(config, path).impl)
    return found


def _source_digest(impl: type) -> str:
    try:
        source = Path(inspect.getsourcefile(impl) or "")
        return hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source.is_file() else ""
    except (OSError, TypeError):
        return ""


def changed_components(recorded: dict | None, current: dict) -> list[str]:
    """What differs between the providers a run recorded and those installed now, in words."""
    if recorded is None:
        return []
    changed = []
    for path in sorted(set(recorded) | set(current)):
        old, new = recorded.get(path), current.get(path)
        if old == new:
            continue
        if old is None or new is None:
            changed.append(f"{path} {'added' if old is None else 'removed'}")
        elif (old["distribution"], old["version"]) != (new["distribution"], new["version"]):
            changed.append(
                f"{path} '{new['name']}' from {old['distribution']} {old['version']} then, {new['distribution']} {new['version']} now"
            )
        else:
            changed.append(
                f"{path} '{new['name']}': the code of {new['plugin']} changed (same version {new['version']})"
            )
    return changed
