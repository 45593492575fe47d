"""The conformance kit: the checks every component must pass, runnable from any test suite.

A plugin author tests a variant with one line::

    from gptzoo.testing import check_component

    def test_my_attention():
        check_component("attention", "my_attention", registry=my_registry)

and gptzoo's own suite runs it over everything registered::

    @pytest.mark.parametrize("family,name", component_cases(make_registry()))
    def test_conformance(family, name): check_component(family, name)

Each ``check_*`` function raises AssertionError saying what broke; they can also be run alone.
"""

from gptzoo.testing.checks import (
    SAMPLE_TEXT,
    UNICODE_TEXT,
    build,
    build_tokenizer,
    check_attention_capture,
    check_bounded_cache,
    check_builds_on_meta,
    check_causal,
    check_component,
    check_forward,
    check_gradients,
    check_kv_cache,
    check_kv_sharing,
    check_loads_state_of,
    check_padded_batch,
    check_receptive_field,
    check_separate_caches,
    check_state_round_trip,
    check_tokenizer,
    component_cases,
    tiny_config,
)

__all__ = [
    "SAMPLE_TEXT",
    "UNICODE_TEXT",
    "build",
    "build_tokenizer",
    "check_attention_capture",
    "check_bounded_cache",
    "check_builds_on_meta",
    "check_causal",
    "check_component",
    "check_forward",
    "check_gradients",
    "check_kv_cache",
    "check_kv_sharing",
    "check_loads_state_of",
    "check_padded_batch",
    "check_receptive_field",
    "check_separate_caches",
    "check_state_round_trip",
    "check_tokenizer",
    "component_cases",
    "tiny_config",
]
