"""The plugin manager and the component table built from it.

``make_registry()`` returns a fresh, independent registry (tests build their own);
``default_registry()`` is the process-wide one the CLI uses, cached and resettable with
``default_registry.cache_clear()``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel, TypeAdapter, ValidationError

from gptzoo.core import FAMILIES, ConfigError, GptzooError, Implementation, ModelConfig, Params, Task, config_error
from gptzoo.registry.hookspecs import GptzooSpec

ENTRY_POINT_GROUP = "gptzoo"
PLUGINS_ENV = "GPTZOO_PLUGINS"
BUILTIN_PLUGINS = (
    "gptzoo.plugins.tokenizers",
    "gptzoo.plugins.integers",
    "gptzoo.plugins.positional",
    "gptzoo.plugins.attention",
    "gptzoo.plugins.sliding_window",
    "gptzoo.plugins.chunked_attention",
    "gptzoo.plugins.teaching_attention",
    "gptzoo.plugins.absent",
    "gptzoo.plugins.latent_attention",
    "gptzoo.plugins.sparse_latent_attention",
    "gptzoo.plugins.short_conv",
    "gptzoo.plugins.linear_attention",
    "gptzoo.plugins.mamba",
    "gptzoo.plugins.parallel_mixers",
    "gptzoo.plugins.delta_rule",
    "gptzoo.plugins.feed_forward",
    "gptzoo.plugins.moe",
    "gptzoo.plugins.mlp_and_experts",
    "gptzoo.plugins.norms",
    "gptzoo.plugins.blocks",
    "gptzoo.plugins.residual",
    "gptzoo.plugins.heads",
    "gptzoo.plugins.mtp",
    "gptzoo.plugins.hf_tokenizer",
    "gptzoo.plugins.tasks",
)


class PluginError(GptzooError):
    """A plugin that cannot be loaded or registers something it may not."""


@dataclass(frozen=True)
class Entry:
    family: str
    name: str
    impl: Implementation
    plugin: str
    distribution: str
    version: str

    @property
    def params_model(self) -> type[Params]:
        return self.impl.Params

    @property
    def provider(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class TaskEntry:
    """A registered task; it reads like an Entry of family "task" (the task class is its params model)."""

    name: str
    task_class: type[Task]
    plugin: str
    distribution: str
    version: str
    family: str = "task"

    @property
    def impl(self) -> type[Task]:
        return self.task_class

    @property
    def params_model(self) -> type[Task]:
        return self.task_class

    @property
    def provider(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"


def _check_defaults(params: type[BaseModel], where: str) -> None:
    """Pydantic does not validate defaults; a wrong one would surface later as a raw TypeError."""
    for field_name, field in params.model_fields.items():
        if field.is_required() or field.default_factory is not None or field.annotation is None:
            continue
        try:
            TypeAdapter(field.annotation).validate_python(field.default, strict=True)
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            raise PluginError(
                f"{where}: the default of param '{field_name}' ({field.default!r}) does not fit its type: {problem}"
            ) from None


def _gptzoo_version() -> str:
    try:
        return md.version("gptzoo")
    except md.PackageNotFoundError:
        return "unknown"


class Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("gptzoo")
        self.pm.add_hookspecs(GptzooSpec)
        self._entries: dict[tuple[str, str], Entry] = {}
        self._hf_families: dict[str, tuple[Any, str]] = {}  # model_type -> (family, the plugin that added it)
        self._tasks: dict[str, TaskEntry] = {}  # in registration order: the built-ins first

    # ---- registering -----------------------------------------------------------------------

    def add(
        self,
        family: str,
        name: str,
        impl: type,
        plugin: str = "<code>",
        distribution: str = "<code>",
        version: str = "",
    ) -> None:
        where = f"plugin '{plugin}'"
        if family not in FAMILIES:
            raise PluginError(
                f"{where} registers '{name}' in unknown family '{family}'; families: {', '.join(FAMILIES)}"
            )
        interface = FAMILIES[family]
        if not (isinstance(impl, type) and issubclass(impl, interface)):
            raise PluginError(
                f"{where}: {family} '{name}' must subclass gptzoo.core.{interface.__name__}, got {impl!r}"
            )
        params = getattr(impl, "Params", None)
        if (
            not (isinstance(params, type) and issubclass(params, BaseModel))
            or params.model_config.get("extra") != "forbid"
        ):
            raise PluginError(
                f"{where}: {family} '{name}' must declare Params as a subclass of gptzoo.core.Params (unknown keys forbidden)"
            )
        _check_defaults(params, f"{where}: {family} '{name}'")
        existing = self._entries.get((family, name))
        if existing is not None:
            if distribution == "<code>" or existing.distribution == "<code>":
                advice = "register one of them under another name, or build a fresh registry with make_registry()"
            else:
                advice = f"uninstall one, or choose plugins with {PLUGINS_ENV}"
            raise PluginError(
                f"{family} '{name}' is provided twice: by {existing.provider} and by {plugin} ({distribution} {version}); {advice}"
            )
        self._entries[(family, name)] = Entry(family, name, impl, plugin, distribution, version)

    def add_hf_family(
        self, family: Any, plugin: str = "<code>", distribution: str = "<code>", version: str = ""
    ) -> None:
        """A Hugging Face family table (gptzoo.recipes.interop.hf.families.Family, which the recipes
        check: the registry stores it without importing them), keyed by its model_type."""
        where = f"plugin '{plugin}'" if distribution == "<code>" else f"plugin '{plugin}' ({distribution} {version})"
        model_type = getattr(family, "model_type", None)
        if not isinstance(model_type, str):
            raise PluginError(
                f"{where} registers a Hugging Face family without a model_type ({family!r}); "
                "register a gptzoo.recipes.interop.hf.families.Family"
            )
        if model_type in self._hf_families:
            raise PluginError(
                f"Hugging Face family '{model_type}' is registered twice: by plugin '{self._hf_families[model_type][1]}' "
                f"and by {where}; uninstall one, or choose plugins with {PLUGINS_ENV}"
            )
        self._hf_families[model_type] = (family, plugin)

    def hf_families(self) -> dict[str, Any]:
        """model_type -> the Hugging Face family a plugin added, in the order they were registered."""
        return {model_type: family for model_type, (family, _) in self._hf_families.items()}

    def add_task(
        self, name: str, task_class: type, plugin: str = "<code>", distribution: str = "<code>", version: str = ""
    ) -> None:
        where = f"plugin '{plugin}'"
        if not (isinstance(task_class, type) and issubclass(task_class, Task)):
            raise PluginError(f"{where}: task '{name}' must subclass gptzoo.core.Task, got {task_class!r}")
        if task_class.model_config.get("extra") != "forbid":
            raise PluginError(f"{where}: task '{name}' must forbid unknown keys, as gptzoo.core.Task does")
        _check_defaults(task_class, f"{where}: task '{name}'")
        existing = self._tasks.get(name)
        if existing is not None:
            raise PluginError(
                f"task '{name}' is provided twice: by {existing.provider} and by {plugin} ({distribution} {version}); "
                f"register one of them under another name, or choose plugins with {PLUGINS_ENV}"
            )
        self._tasks[name] = TaskEntry(name, task_class, plugin, distribution, version)

    def component(self, family: str, name: str) -> Callable[[type], type]:
        """Decorator registering a class in code (notebooks, tests): ``@registry.component("attention", "mine")``."""

        def decorate(impl: type) -> type:
            self.add(family, name, impl, plugin=impl.__module__)
            return impl

        return decorate

    def register_plugin(
        self, plugin: Any, name: str | None = None, distribution: str = "<code>", version: str = ""
    ) -> None:
        """Register a plugin object or module through the ``register_components``, ``register_tasks`` and
        ``register_hf_families`` hooks."""
        name = name or str(getattr(plugin, "__name__", repr(plugin)))
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as err:
            self.pm.unregister(name=name) if self.pm.has_plugin(name) else None
            raise PluginError(f"plugin '{name}' ({distribution}) is invalid: {err}") from None
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        components = self.pm.subset_hook_caller("register_components", remove_plugins=others)
        components(register=lambda family, cname, impl: self.add(family, cname, impl, name, distribution, version))
        hf_families = self.pm.subset_hook_caller("register_hf_families", remove_plugins=others)
        hf_families(register=lambda family: self.add_hf_family(family, name, distribution, version))
        tasks = self.pm.subset_hook_caller("register_tasks", remove_plugins=others)
        tasks(register=lambda tname, task_class: self.add_task(tname, task_class, name, distribution, version))

    def load_entry_points(self) -> None:
        """Load third-party plugins from the ``gptzoo`` entry-point group, as GPTZOO_PLUGINS selects."""
        eps = {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
        selected = os.environ.get(PLUGINS_ENV)
        if selected is not None:
            wanted = [s.strip() for s in selected.split(",") if s.strip()]
            missing = [w for w in wanted if w not in eps]
            if missing:
                raise PluginError(
                    f"{PLUGINS_ENV} names {', '.join(missing)}, not installed; installed plugins: {', '.join(sorted(eps)) or 'none'}"
                )
            eps = {w: eps[w] for w in wanted}
        for ep_name, ep in sorted(eps.items()):
            dist = ep.dist.name if ep.dist else "unknown"
            version = ep.dist.version if ep.dist else ""
            try:
                module = ep.load()
            except Exception as err:  # noqa: BLE001 -- any import failure becomes one actionable message
                raise PluginError(
                    f"plugin '{ep_name}' (entry point '{ep_name} = {ep.value}' of {dist} {version}) failed to import: "
                    f"{type(err).__name__}: {err}. Fix or uninstall it, or choose which plugins load with "
                    f"{PLUGINS_ENV}=name,name ('' loads none)"
                ) from err
            self.register_plugin(module, name=ep_name, distribution=dist, version=version)

    # ---- looking up --------------------------------------------------------------------------

    def entries(self, family: str | None = None) -> list[Entry]:
        return sorted(
            (e for e in self._entries.values() if family in (None, e.family)),
            key=lambda e: (list(FAMILIES).index(e.family), e.name),
        )

    def names(self, family: str) -> list[str]:
        return [e.name for e in self.entries(family)]

    def get(self, family: str, name: str) -> Entry:
        entry = self._entries.get((family, name))
        if entry is None:
            raise KeyError(self._unknown(family, name))
        return entry

    def resolve(self, family: str, name: str) -> Implementation:
        entry = self._entries.get((family, name))
        if entry is None:
            raise ValueError(self._unknown(family, name))
        return entry.impl

    def tasks(self) -> list[TaskEntry]:
        return list(self._tasks.values())

    def task_names(self) -> list[str]:
        return list(self._tasks)

    def task(self, name: str) -> type[Task]:
        entry = self._tasks.get(name)
        if entry is None:
            close = difflib.get_close_matches(str(name), list(self._tasks), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(repr(n) for n in self._tasks) or "none"
            raise ValueError(f"unknown task {name!r}{hint}; registered tasks: {known}")
        return entry.task_class

    def _unknown(self, family: str, name: str) -> str:
        names = self.names(family)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {family} '{name}'{hint}; available: {', '.join(names) or 'none'}"

    # ---- configs -----------------------------------------------------------------------------

    def model_config(self, data: dict[str, Any] | ModelConfig, source: str = "model config") -> ModelConfig:
        """Validate a model config against this registry; ConfigError lists every problem."""
        try:
            return ModelConfig.model_validate(data, context={"registry": self})
        except ValidationError as err:
            raise config_error(err, source, ModelConfig) from None


def make_registry(*, entry_points: bool = True) -> Registry:
    """A fresh registry with the built-in plugins and, unless told not to, installed ones."""
    registry = Registry()
    version = _gptzoo_version()
    for module_name in BUILTIN_PLUGINS:
        registry.register_plugin(
            importlib.import_module(module_name), name=module_name, distribution="gptzoo", version=version
        )
    if entry_points:
        registry.load_entry_points()
    return registry


@functools.cache
def default_registry() -> Registry:
    return make_registry()


__all__ = ["ConfigError", "Entry", "PluginError", "Registry", "TaskEntry", "default_registry", "make_registry"]
