"""The one hook through which every plugin, built-in or third-party, registers its components."""

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
