"""The commands and code that README.md and docs/*.md mark as runnable must run.

Each page's marked blocks run in page order in a fresh working folder. The folder contains
a copy of `configs/`, the overlays of `tests/docs_overlays/` as `tiny/`, and small
stand-in inputs under `raw/` (`docs_inputs.py`). The overlays cut the demos to 2
training steps and tiny end-of-fit evaluations. The marker syntax is described in
`docs_snippets.py`. A failure names the page and the line of the block.

`make demo` and `make test` are left unmarked and never run here: both first run
`make setup`, which reinstalls the package into `.venv` (and would repoint an
editable install at the copy), and `make test` would start this suite again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs_inputs import make_raw_inputs
from docs_snippets import (
    Snippet,
    SnippetError,
    find_snippets,
    prepare_shell,
    prepare_workdir,
    run_snippet,
    unisep_command,
)

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = Path(__file__).resolve().parent / "docs_overlays"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Pages whose commands take minutes by design (benchmark scripts) have no runnable block.
PAGES_WITHOUT_RUNNABLE_BLOCKS = {"docs/benchmarks.md"}
RUNNABLE_PAGES = [page for page in PAGES if str(page.relative_to(REPO)) not in PAGES_WITHOUT_RUNNABLE_BLOCKS]


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_markers_are_well_formed(page):
    snippets = find_snippets(page)
    if _page_id(page) in PAGES_WITHOUT_RUNNABLE_BLOCKS:
        assert snippets == []
    else:
        assert snippets, f"{_page_id(page)} has no runnable block"


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]*)?\)", readme))
    for page in sorted((REPO / "docs").glob("*.md")):
        assert _page_id(page) in linked, f"README.md does not link {_page_id(page)}"


def test_extending_examples_are_runnable():
    snippets = find_snippets(REPO / "docs" / "extending.md")
    python_blocks = [snippet for snippet in snippets if snippet.language == "python"]
    # Three examples (preset, modality, callback), each with code that a block runs or imports.
    assert len(python_blocks) >= 3
    assert any("register_reconstruction_loss" in snippet.code for snippet in python_blocks)
    assert any("UNITE_PRESETS" in snippet.code for snippet in python_blocks)
    assert any("(Callback)" in snippet.code for snippet in python_blocks)


def test_shell_block_gets_overlay_and_executables():
    snippet = Snippet(
        page=REPO / "README.md",
        line=1,
        language="bash",
        code=".venv/bin/unisep fit --config configs/demo/unite_digits.yaml \\\n    --trainer.max_steps 200   # comment\n",
        options={"config": "tiny/{config}.yaml", "append": "--trainer.max_steps 2"},
    )
    script = prepare_shell(snippet)
    assert "--config configs/demo/unite_digits.yaml --config tiny/demo/unite_digits.yaml --trainer.max_steps 200" in script
    assert script.rstrip().endswith("--trainer.max_steps 2")
    assert "# comment" not in script
    assert script.startswith(f"{unisep_command()} fit ")


def test_replace_of_missing_text_is_an_error():
    snippet = Snippet(REPO / "README.md", 7, "bash", "unisep data images a b\n", {"replace": "/nowhere => raw"})
    with pytest.raises(SnippetError, match="README.md:7"):
        prepare_shell(snippet)


def test_broken_command_fails_with_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\n<!-- runnable -->\n```bash\nunisep fit --config configs/missing.yaml\n```\n")
    (snippet,) = find_snippets(page)
    with pytest.raises(SnippetError) as error:
        run_snippet(snippet, tmp_path)
    assert str(error.value).startswith(f"{page}:4: bash block failed")
    assert "configs/missing.yaml" in str(error.value)


def test_marker_without_fence_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable -->\nnot a fence\n")
    with pytest.raises(SnippetError, match="page.md:1"):
        find_snippets(page)


@pytest.fixture(scope="module")
def raw_inputs(tmp_path_factory):
    """The stand-in inputs, written once and only read by the documented commands."""
    return make_raw_inputs(tmp_path_factory.mktemp("docs_inputs"))


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=_page_id)
def test_page_snippets_run(page, tmp_path, raw_inputs):
    prepare_workdir(tmp_path, REPO, OVERLAYS)
    (tmp_path / "raw").symlink_to(raw_inputs, target_is_directory=True)
    for snippet in find_snippets(page):
        try:
            run_snippet(snippet, tmp_path)
        except SnippetError as error:
            # The message names the page, the line and the command; the runner's traceback adds nothing.
            pytest.fail(str(error), pytrace=False)
