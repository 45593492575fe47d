"""The top-level folders import as gptzoo.<folder>, in the editable install and from a built wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "registry", "plugins", "recipes", "testing")


def test_editable_install_maps_the_folders():
    import importlib

    for folder in PACKAGES:
        module = importlib.import_module(f"gptzoo.{folder}")
        assert Path(module.__file__).resolve() == ROOT / folder / "__init__.py"


@pytest.mark.slow
def test_wheel_holds_the_gptzoo_packages_only(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("gptzoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "gptzoo/core/model.py",
        "gptzoo/plugins/attention.py",
        "gptzoo/registry/registry.py",
        "gptzoo/recipes/cli/__init__.py",
        "gptzoo/recipes/cli/train.py",
        "gptzoo/recipes/interop/hf/families/llama.py",
        "gptzoo/testing/__init__.py",
        "gptzoo/configs/tiny.toml",  # the presets, subfolders too
        "gptzoo/configs/hf/qwen3.toml",
        "gptzoo/configs/book/ch05-verdict.toml",
        "gptzoo/configs/book/ch06-spam.toml",
        "gptzoo/configs/ablations/attention.toml",
    ):
        assert required in names
    assert not any(
        n.startswith(("configs/", "core/", "plugins/", "registry/", "recipes/", "testing/", "tests/", "gptzoo/tests/"))
        for n in names
    )
    assert "gptzoo/__init__.py" not in names  # gptzoo is a namespace package
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "gptzoo = gptzoo.recipes.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # Installed as a regular (non-editable) package, it imports from there.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = "import gptzoo.core, gptzoo.testing, gptzoo.recipes.cli; print(gptzoo.core.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        timeout=120,
    )
    assert Path(out.stdout.strip()) == site / "gptzoo" / "core" / "__init__.py"

    # ... and finds the presets by name there, not in this checkout.
    probe = "from gptzoo.recipes.config.presets import find_config; print(find_config('qwen3'))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": ""},
        timeout=120,
    )
    assert Path(out.stdout.strip()) == site / "gptzoo" / "configs" / "hf" / "qwen3.toml"
