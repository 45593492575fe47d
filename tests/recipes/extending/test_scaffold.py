"""gptzoo new-plugin writes a package whose own test passes: the conformance kit on its component."""

import importlib.util
import sys
import tomllib

import pytest

from gptzoo.recipes.cli import main
from gptzoo.recipes.extending.scaffold import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_scaffold_passes_its_own_conformance_test(tmp_path, family, capsys, monkeypatch):
    out = tmp_path / "pkg"
    assert main(["new-plugin", f"my_{family}", "--family", family, "--out", str(out)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    project = tomllib.loads((out / "pyproject.toml").read_text())["project"]
    module = f"gptzoo_my_{family}"
    assert project["entry-points"]["gptzoo"] == {module: module}
    monkeypatch.syspath_prepend(str(out))
    spec = importlib.util.spec_from_file_location("generated_test", out / "tests" / f"test_my_{family}.py")
    test_module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(test_module)
        getattr(test_module, f"test_my_{family}_conforms")()
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["My-Norm", "--family", "norm"], "use lower-case letters"),
        (["fine", "--family", "norm", "--out", "{file}"], "is a file, not a folder; choose another --out"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, args, message):
    file = tmp_path / "taken"
    file.write_text("x")
    args = [a.replace("{file}", str(file)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "new")]
    assert main(["new-plugin", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert file.read_text() == "x"
