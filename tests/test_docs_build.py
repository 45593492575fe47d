"""The documentation site builds in mkdocs' strict mode: a broken link, a missing anchor or a page
left out of mkdocs.yml's nav fails it (`make docs` runs the same build into site/)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("material", reason="the docs extra (mkdocs-material) is not installed")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (site / "index.html").is_file()
    assert (site / "reference" / "plugins" / "index.html").is_file()
    assert (site / "findings" / "scaling" / "index.html").is_file()
