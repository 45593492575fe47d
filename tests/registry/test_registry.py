"""The registry: entry-point discovery, GPTZOO_PLUGINS, and every way a plugin can be wrong."""

import itertools
import textwrap

import pytest

from gptzoo.core import Attention, Params
from gptzoo.plugins.norms import RMSNorm, RMSNormParams
from gptzoo.registry import PLUGINS_ENV, PluginError, default_registry, hookimpl, make_registry

_unique = itertools.count()


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(dist, {entry point: module source}) -> makes an installed-looking distribution on sys.path."""

    def install(dist, plugins, version="1.0"):
        root = tmp_path / f"site{next(_unique)}"
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[gptzoo]"]
        for ep_name, source in plugins.items():
            module = f"{ep_name}_{next(_unique)}"  # unique: never a module cached by an earlier test
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module}")
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(root))

    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return install


RMS_PLUGIN = """
    from gptzoo.plugins.norms import RMSNorm
    from gptzoo.registry import hookimpl

    class {cls}(RMSNorm):
        pass

    @hookimpl
    def register_components(register):
        register("norm", "{name}", {cls})
"""


def rms_plugin(name, cls="MyNorm"):
    return RMS_PLUGIN.format(name=name, cls=cls)


def test_entry_point_plugin_is_registered_with_its_distribution(install):
    install("zoo_extra", {"extra": rms_plugin("rms2")}, version="2.3")
    entry = make_registry().get("norm", "rms2")
    assert (entry.plugin, entry.distribution, entry.version) == ("extra", "zoo_extra", "2.3")
    assert issubclass(entry.impl, RMSNorm)
    assert entry.provider == "extra (zoo_extra 2.3)"


def test_same_name_from_two_plugins_names_both_providers(install):
    install("zoo_one", {"one": rms_plugin("shared")}, version="1.0")
    install("zoo_two", {"two": rms_plugin("shared")}, version="2.0")
    with pytest.raises(PluginError) as err:
        make_registry()
    message = str(err.value)
    for fragment in ("norm 'shared'", "one (zoo_one 1.0)", "two (zoo_two 2.0)", PLUGINS_ENV):
        assert fragment in message


def test_plugin_shadowing_a_builtin_is_refused(install):
    install("zoo_shadow", {"shadow": rms_plugin("rmsnorm")})
    with pytest.raises(
        PluginError,
        match=r"norm 'rmsnorm' is provided twice: by gptzoo.plugins.norms \(gptzoo .*\) and by shadow \(zoo_shadow 1.0\)",
    ):
        make_registry()


def test_plugin_that_fails_to_import_names_plugin_and_entry_point(install):
    install("zoo_broken", {"broken": "import a_module_that_does_not_exist\n"})
    with pytest.raises(PluginError) as err:
        make_registry()
    message = str(err.value)
    for fragment in (
        "plugin 'broken'",
        "entry point 'broken = broken_",
        "zoo_broken",
        "ModuleNotFoundError",
        "a_module_that_does_not_exist",
        PLUGINS_ENV,
    ):
        assert fragment in message


def test_plugins_env_selects_entry_points(install, monkeypatch):
    install("zoo_good", {"good": rms_plugin("good_norm")})
    install("zoo_broken", {"broken": "raise RuntimeError('boom')\n"})
    monkeypatch.setenv(PLUGINS_ENV, "")
    assert "good_norm" not in make_registry().names("norm")  # '' loads none, so the broken one is harmless
    assert "rmsnorm" in make_registry().names("norm")  # built-ins always load
    monkeypatch.setenv(PLUGINS_ENV, "good")
    assert "good_norm" in make_registry().names("norm")
    monkeypatch.setenv(PLUGINS_ENV, " good , broken ")
    with pytest.raises(PluginError, match="boom"):
        make_registry()
    assert "good_norm" not in make_registry(entry_points=False).names("norm")  # entry points skipped


def test_plugins_env_with_an_unknown_name_lists_the_installed_ones(install, monkeypatch):
    install("zoo_good", {"good": rms_plugin("good_norm")})
    monkeypatch.setenv(PLUGINS_ENV, "good,nonesuch")
    with pytest.raises(PluginError, match=r"GPTZOO_PLUGINS names nonesuch, not installed; installed plugins: .*good"):
        make_registry()


# ---- plugins written wrongly ----------------------------------------------------------------


def test_misspelt_hook_fails_loudly(registry):
    class Typo:
        @hookimpl
        def register_component(self, register):  # missing the final "s"
            register("norm", "typo", RMSNorm)

    with pytest.raises(PluginError, match=r"plugin 'typo'.*register_component"):
        registry.register_plugin(Typo(), name="typo")
    assert "typo" not in registry.names("norm")
    assert not registry.pm.has_plugin("typo")


def test_hook_with_a_wrong_argument_fails_loudly(registry):
    class WrongArgs:
        @hookimpl
        def register_components(self, add):
            add("norm", "wrong", RMSNorm)

    with pytest.raises(PluginError, match="plugin 'wrong_args'"):
        registry.register_plugin(WrongArgs(), name="wrong_args")


def test_class_not_subclassing_the_interface_is_refused(registry):
    with pytest.raises(PluginError, match=r"attention 'norm_as_attention' must subclass gptzoo.core.Attention"):
        registry.add("attention", "norm_as_attention", RMSNorm)
    with pytest.raises(PluginError, match="must subclass"):
        registry.add("attention", "not_a_class", lambda params, dims: None)


def test_params_that_allow_extra_keys_are_refused(registry):
    from pydantic import BaseModel, ConfigDict

    class Lenient(BaseModel):
        model_config = ConfigDict(extra="allow")

    class LenientNorm(RMSNorm):
        Params = Lenient

    with pytest.raises(PluginError, match=r"norm 'lenient' must declare Params as a subclass of gptzoo.core.Params"):
        registry.add("norm", "lenient", LenientNorm)


def test_unknown_family_is_refused(registry):
    with pytest.raises(PluginError, match="unknown family 'optimizer'; families: tokenizer, positional"):
        registry.add("optimizer", "adam", RMSNorm)


def test_component_decorator_registers_in_code(registry):
    class ScaleParams(RMSNormParams):  # a subclass keeps the params its parent's methods read
        factor: float = 2.0

    @registry.component("norm", "scaled_rms")
    class ScaledRMS(RMSNorm):
        Params = ScaleParams

    assert registry.resolve("norm", "scaled_rms") is ScaledRMS
    entry = registry.get("norm", "scaled_rms")
    assert entry.plugin == __name__ and entry.distribution == "<code>"
    config = registry.model_config(
        {"context_length": 8, "d_model": 8, "n_layers": 1, "n_heads": 2, "norm": {"name": "scaled_rms", "factor": 3.0}}
    )
    assert config.norm.params.factor == 3.0


def test_register_plugin_with_a_module_object(registry):
    import types

    module = types.ModuleType("notebook_plugin")

    class NotebookAttention(Attention):
        def forward(self, x, ctx, cache=None):
            return x

    @hookimpl
    def register_components(register):
        register("attention", "identity", NotebookAttention)

    module.register_components = register_components
    registry.register_plugin(module)
    assert registry.get("attention", "identity").plugin == "notebook_plugin"


def test_lookups_suggest_the_closest_name(registry):
    available = ", ".join(registry.names("attention"))  # every registered name, from the registry itself
    with pytest.raises(
        ValueError, match=rf"unknown attention 'spda' \(did you mean 'sdpa'\?\); available: {available}$"
    ):
        registry.resolve("attention", "spda")
    with pytest.raises(KeyError, match=f"unknown norm 'xyz'; available: {', '.join(registry.names('norm'))}"):
        registry.get("norm", "xyz")


# ---- registry instances -------------------------------------------------------------------------


def test_make_registry_calls_are_independent():
    first, second = make_registry(), make_registry()
    first.add("norm", "only_in_first", RMSNorm)
    assert "only_in_first" in first.names("norm")
    assert "only_in_first" not in second.names("norm")
    assert first.pm is not second.pm


@pytest.fixture
def fresh_default():
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def test_default_registry_is_cached_and_resettable(fresh_default, install, monkeypatch):
    assert default_registry() is default_registry()
    before = default_registry()
    install("zoo_late", {"late": rms_plugin("late_norm")})
    assert "late_norm" not in default_registry().names("norm")  # still the cached one
    default_registry.cache_clear()
    assert default_registry() is not before
    assert "late_norm" in default_registry().names("norm")


@pytest.mark.parametrize("annotation, default", [(int, "32"), (float, "0.5"), (bool, 1), (int | None, 2.5)])
def test_a_default_that_does_not_fit_its_type_is_refused_at_registration(registry, annotation, default):
    from pydantic import create_model

    params = create_model("WindowParams", __base__=Params, window=(annotation, default))
    impl = type("Windowed", (RMSNorm,), {"Params": params})
    with pytest.raises(PluginError) as err:
        registry.add("norm", "windowed", impl, plugin="my_plugin")
    message = str(err.value)
    assert (
        "my_plugin" in message
        and "norm 'windowed'" in message
        and "param 'window'" in message
        and repr(default) in message
    )


def test_defaults_that_fit_are_accepted(registry):
    from pydantic import create_model

    params = create_model("OkParams", __base__=Params, scale=(float, 1), window=(int | None, None), name=(str, "x"))
    registry.add("norm", "fine", type("Fine", (RMSNorm,), {"Params": params}))
    assert registry.resolve("norm", "fine").Params().scale == 1


def test_registering_twice_in_code_says_what_to_do_in_code(registry):
    @registry.component("norm", "mine")
    class Mine(RMSNorm):
        pass

    with pytest.raises(PluginError) as err:
        registry.component("norm", "mine")(type("Again", (RMSNorm,), {}))
    message = str(err.value)
    assert "provided twice" in message and "another name" in message and "make_registry()" in message
    assert PLUGINS_ENV not in message and "uninstall" not in message.lower()


# ---- tasks ----------------------------------------------------------------------------------------


def test_a_task_not_subclassing_task_is_refused(registry):
    from pydantic import BaseModel, ConfigDict

    class Loose(BaseModel):
        model_config = ConfigDict(extra="forbid")

    with pytest.raises(PluginError, match=r"plugin 'mine': task 'loose' must subclass gptzoo.core.Task"):
        registry.add_task("loose", Loose, plugin="mine")


def test_a_task_allowing_extra_keys_is_refused(registry):
    from pydantic import ConfigDict

    from gptzoo.core import Task

    class Lenient(Task):
        model_config = ConfigDict(extra="allow")

    with pytest.raises(PluginError, match="task 'lenient' must forbid unknown keys"):
        registry.add_task("lenient", Lenient, plugin="mine")


def test_a_task_name_taken_by_a_builtin_names_both_providers(install):
    install(
        "shadow_tasks",
        {
            "shadow": """
                from gptzoo.plugins.tasks import Induction
                from gptzoo.registry import hookimpl

                @hookimpl
                def register_tasks(register):
                    register("induction", Induction)
            """
        },
    )
    with pytest.raises(PluginError) as err:
        make_registry()
    assert str(err.value).startswith(
        "task 'induction' is provided twice: by gptzoo.plugins.tasks (gptzoo "
    ) and "by shadow (shadow_tasks 1.0)" in str(err.value)


def test_unknown_task_suggests_the_closest_and_lists_the_registered(registry):
    with pytest.raises(
        ValueError,
        match=r"unknown task 'induktion' \(did you mean 'induction'\?\); registered tasks: 'mqar', 'induction', 'selective_copy'$",
    ):
        registry.task("induktion")
