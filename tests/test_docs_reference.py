"""The generated reference pages in docs/reference/ are what docs/gen_reference.py writes from the code now.

When this fails, a CLI option, a plugin's params, a config field or a Hugging Face family changed:
regenerate the pages with `python docs/gen_reference.py` (from the repository root, in the project's
.venv) and commit them with the change.
"""

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages(generator):
    return generator.render()


def test_the_four_pages_are_generated(pages):
    assert sorted(pages) == ["cli.md", "config.md", "hf-families.md", "plugins.md"]


@pytest.mark.parametrize("name", ["plugins.md", "config.md", "cli.md", "hf-families.md"])
def test_committed_page_is_current(pages, name):
    committed = (DOCS / "reference" / name).read_text(encoding="utf-8")
    assert committed == pages[name], f"docs/reference/{name} is stale: run `python docs/gen_reference.py` and commit it"


def test_pages_name_what_the_code_has(pages):
    # Independent spot checks: names any reader of the code would expect on each page.
    assert "### `rope`" in pages["plugins.md"] and "| `base` |" in pages["plugins.md"]
    assert "| `max_steps` |" in pages["config.md"] and "| `context_length` |" in pages["config.md"]
    assert "## `gptzoo train`" in pages["cli.md"] and "`--resume`" in pages["cli.md"]
    assert "## llama" in pages["hf-families.md"] and "`LlamaForCausalLM`" in pages["hf-families.md"]


def test_rendering_twice_gives_the_same_text(generator, pages):
    assert generator.render() == pages
