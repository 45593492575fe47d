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


def test_the_loops_parts_the_old_readme_named_stay_reachable():
    from gptzoo.recipes.training import checkpoint, evaluation, loop, optim

    sys.modules.pop("gptzoo.recipes.train", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("gptzoo.recipes.train")
    assert old.build_optimizer is optim.build_optimizer and old.lr_at is optim.lr_at
    assert old.train_step is loop.train_step and old.save_checkpoint is checkpoint.save_checkpoint
    assert old.estimate_loss is evaluation.estimate_loss
    with pytest.raises(AttributeError, match="no attribute 'no_such_part'"):
        old.no_such_part  # noqa: B018
