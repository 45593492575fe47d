"""The import paths the 0.1 README taught keep working for one release, with a deprecation warning."""

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("gptzoo.recipes.train", "train", "gptzoo.recipes.training.loop"),
        ("gptzoo.recipes.run", "load_run", "gptzoo.recipes.runs.folder"),
        ("gptzoo.recipes.inspect", "inspect_model", "gptzoo.recipes.research.inspection"),
    ],
)
def test_old_path_warns_and_gives_the_same_object(old, name, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_config_path_is_the_package():
    from gptzoo.recipes.config import load_run_config
    from gptzoo.recipes.config.schema import load_run_config as in_module

    assert load_run_config is in_module
