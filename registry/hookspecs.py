"""The hooks through which every plugin, built-in or third-party, registers what it adds: components,
diagnostic tasks and Hugging Face model families."""

import pluggy

hookspec = pluggy.HookspecMarker("gptzoo")
hookimpl = pluggy.HookimplMarker("gptzoo")


class GptzooSpec:
    @hookspec
    def register_components(self, register):
        """Register the components this plugin provides.

        Call ``register(family, name, impl)`` once per component: ``family`` is one of
        gptzoo.core.FAMILIES, ``impl`` subclasses that family's interface and declares its
        params model as ``impl.Params`` (a subclass of gptzoo.core.Params).
        """

    @hookspec
    def register_hf_families(self, register):
        """Register the Hugging Face model families this plugin imports and exports.

        Call ``register(family)`` once per family: a gptzoo.recipes.interop.hf.families.Family
        (recipes/interop/hf/README.md says how to write one) whose ``model_type`` no built-in
        family and no other plugin has. import-hf and export-hf read it beside the built-in table.
        """

    @hookspec
    def register_tasks(self, register):
        """Register the diagnostic tasks this plugin provides (``data.task = { name = ..., ... }``).

        Call ``register(name, task_class)`` once per task: ``task_class`` subclasses
        gptzoo.core.Task, declares ``name: Literal["<name>"]`` and its own fields (unknown keys
        forbidden), and draws one example with ``example(rng, length)``.
        """
