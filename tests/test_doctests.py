"""Docstring examples of every public module, and the ``pycon`` examples of the docs pages.

Modules: ``doctest`` on each module of the package whose dotted name has no ``_``-prefixed
part. Docs: every fenced ```` ```pycon ```` block of ``docs/**/*.md`` runs as a doctest, the
blocks of a page sharing one namespace (in order). ```` ```python ```` blocks are not run.
"""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import torchshift2

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_modules():
    names = ["torchshift2"]
    for info in pkgutil.walk_packages(torchshift2.__path__, "torchshift2."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", public_modules())
def test_module_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_public_api_has_examples():
    """The modules users read have runnable examples (guards against doctest finding none)."""
    finder = doctest.DocTestFinder()
    for name in ("torchshift2.functional", "torchshift2.nn", "torchshift2.backends",
                 "torchshift2.convert", "torchshift2.quantized"):
        examples = sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
        assert examples > 0, name
    for name in ("shift", "Shift1d", "Shift2d", "Shift3d", "use_backend", "replace_depthwise"):
        assert ">>>" in getattr(torchshift2, name).__doc__, name


_PYCON = re.compile(r"^```pycon[^\n]*\n(.*?)^```", re.S | re.M)
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))


def pycon_blocks(path: Path):
    return _PYCON.findall(path.read_text())


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if pycon_blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_docs_page_examples(page):
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    globs = {"__name__": "__docs__"}
    for number, block in enumerate(pycon_blocks(page)):
        test = parser.get_doctest(block, globs, f"{page.name}[{number}]", str(page), 0)
        runner.run(test, clear_globs=False)
        globs.update(test.globs)  # DocTest works on a copy; later blocks see earlier names
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"


def test_readme_example_runs():
    """The README's usage example (its first ```python block) runs as written."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no ```python example"
    exec(compile(block.group(1), "README.md", "exec"), {"__name__": "__readme__"})
