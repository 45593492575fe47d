"""The documentation site builds in mkdocs' strict mode: a broken link, a missing anchor or a page
left out of mkdocs.yml's nav fails it (`make docs` runs the same build into site/)."""

import os
import re
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


def test_readme_links_point_at_files():
    # mkdocs checks the links between docs pages; the README sits outside docs/, so its links are checked here.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in link}
    assert "docs/index.md" in targets
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README.md links to files that do not exist: {missing}"
