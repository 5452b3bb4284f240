"""Find the code blocks that README.md and docs/*.md mark as runnable, and run them.

A runnable block is a fenced block whose previous line is a marker comment, which a
rendered page does not show:

    <!-- runnable -->
    <!-- runnable config="tiny/{config}.yaml" append="--trainer.max_steps 4" -->
    <!-- runnable replace="/data/imagenet => raw/imagenet" -->
    <!-- runnable file="wine_modality.py" -->

Options (shell-style quoting, all optional):

- `config=FILE`: in every `unisep` or `python` command of the block that has a
  `--config X`, insert `--config FILE` right after it, so the documented overrides that
  follow still win.
  `{config}` in FILE is X relative to `configs/`, without `.yaml`; the test's overlays
  for `configs/demo/unite_digits.yaml` are therefore `tiny/demo/unite_digits.yaml`.
- `append=ARGS`: append ARGS to every `unisep` or `python` command of the block.
- `replace="OLD => NEW; ..."`: replace text in the block before it runs, e.g. a dataset
  path by the test's small stand-in.
- `file=NAME`: write the block to NAME in the working folder instead of running it (a
  module or a config that later blocks use).
- `timeout=SECONDS`: limit of the block (default 300).

`bash` blocks run with `bash -euo pipefail`; `python` blocks run as a script. Every
block of a page runs in page order in one working folder. `unisep`, `.venv/bin/unisep`,
`python` and `.venv/bin/python` at a command position run this environment's executables.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^<!--\s*runnable\b(?P<options>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<language>[\w+-]*)\s*$")
OPTIONS = ("config", "append", "replace", "file", "timeout")
LANGUAGES = ("bash", "python", "yaml")
DEFAULT_TIMEOUT_S = 300

# A command word at the start of a line or after a separator or an environment assignment.
_COMMAND_START = r"(?:^|(?<=[\s;&|(]))"
UNISEP_WORD = re.compile(_COMMAND_START + r"(?:\.venv/bin/)?unisep(?=\s|$)", re.MULTILINE)
PYTHON_WORD = re.compile(_COMMAND_START + r"(?:\.venv/bin/)?python3?(?=\s|$)", re.MULTILINE)
FIRST_CONFIG = re.compile(r"--config[ =](?P<path>\S+)")
TRAILING_COMMENT = re.compile(r"\s+#.*$")


class SnippetError(AssertionError):
    """A runnable block is malformed or failed; the message starts with `page:line`."""


@dataclass(frozen=True)
class Snippet:
    """One marked block.

    Attributes:
        page: the Markdown file.
        line: 1-based line of the opening fence.
        language: "bash", "python" or "yaml".
        code: the block's text.
        options: the marker's options.
    """

    page: Path
    line: int
    language: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """`page:line`, relative to the repository when possible."""
        return f"{_display_path(self.page)}:{self.line}"


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def parse_options(text: str, location: str) -> dict[str, str]:
    """Parse `key="value"` pairs of a marker; raise `SnippetError` on an unknown key."""
    options: dict[str, str] = {}
    for item in shlex.split(text):
        key, separator, value = item.partition("=")
        if not separator or key not in OPTIONS:
            raise SnippetError(f"{location}: invalid runnable option {item!r}; options are {', '.join(OPTIONS)}")
        options[key] = value
    return options


def find_snippets(page: Path) -> list[Snippet]:
    """Return the marked blocks of a Markdown page, in page order.

    Raises:
        SnippetError: a marker is not followed by a fenced block, the block is not
            closed, its language is not supported, or a yaml block has no `file=`.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets = []
    for index, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        location = f"{_display_path(page)}:{index + 1}"
        options = parse_options(match["options"], location)
        opening = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if opening is None:
            raise SnippetError(f"{location}: a runnable marker must be followed directly by a fenced code block")
        language = opening["language"]
        if language not in LANGUAGES:
            raise SnippetError(f"{location}: runnable blocks must be {', '.join(LANGUAGES)}, got {language!r}")
        if language == "yaml" and "file" not in options:
            raise SnippetError(f"{location}: a runnable yaml block needs file=NAME")
        end = next((j for j in range(index + 2, len(lines)) if lines[j].strip() == opening["fence"]), None)
        if end is None:
            raise SnippetError(f"{location}: the fenced block is not closed")
        code = "\n".join(lines[index + 2 : end]) + "\n"
        snippets.append(Snippet(page, index + 2, language, code, options))
    return snippets


def _join_continuations(code: str) -> list[str]:
    """Return the shell lines of a block with backslash-continued lines joined by one space."""
    commands, pending = [], []
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1].strip())
        else:
            commands.append(" ".join([*pending, line.strip()]) if pending else line)
            pending = []
    if pending:
        commands.append(" ".join(pending))
    return commands


def _shrink_command(command: str, options: dict[str, str]) -> str:
    """Insert the overlay config and append the extra arguments to a unisep or python command."""
    if not (UNISEP_WORD.search(command) or PYTHON_WORD.search(command)):
        return command
    command = TRAILING_COMMENT.sub("", command)
    overlay = options.get("config")
    if overlay:
        match = FIRST_CONFIG.search(command)
        if match is None:
            # Commands without a config in the same block (a shard writer) stay as written.
            return _append(command, options)
        name = re.sub(r"^configs/", "", match["path"]).removesuffix(".yaml")
        insertion = f" --config {overlay.replace('{config}', name)}"
        command = command[: match.end()] + insertion + command[match.end() :]
    return _append(command, options)


def _append(command: str, options: dict[str, str]) -> str:
    return f"{command} {options['append']}" if options.get("append") else command


def unisep_command() -> str:
    """Return the shell words that run this environment's `unisep`."""
    script = Path(sys.executable).with_name("unisep")
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m unisep.cli"


def prepare_shell(snippet: Snippet) -> str:
    """Return the bash script that runs a shell block with the marker's changes applied."""
    code = apply_replacements(snippet.code, snippet.options.get("replace"), snippet.location)
    commands = [_shrink_command(command, snippet.options) for command in _join_continuations(code)]
    script = "\n".join(commands) + "\n"
    script = UNISEP_WORD.sub(lambda _: unisep_command(), script)
    return PYTHON_WORD.sub(lambda _: shlex.quote(sys.executable), script)


def apply_replacements(code: str, spec: str | None, location: str) -> str:
    """Apply `replace="OLD => NEW; ..."`; raise if an OLD text is absent."""
    if not spec:
        return code
    for pair in spec.split(";"):
        old, separator, new = pair.partition("=>")
        old, new = old.strip(), new.strip()
        if not separator or not old:
            raise SnippetError(f"{location}: invalid replace {pair!r}; write OLD => NEW")
        if old not in code:
            raise SnippetError(f"{location}: replace text {old!r} does not occur in the block")
        code = code.replace(old, new)
    return code


def snippet_environment(workdir: Path) -> dict[str, str]:
    """Environment of the snippets: this venv first on PATH, one torch thread, caches in `workdir`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    # The FID reference cache of `unisep eval fid` defaults to $XDG_CACHE_HOME/unisep.
    env["XDG_CACHE_HOME"] = str(workdir / ".cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_snippet(snippet: Snippet, workdir: Path) -> None:
    """Run (or write) one block in `workdir`.

    Raises:
        SnippetError: the block failed or timed out; the message names the page and
            line, the command that ran and the end of its output.
    """
    name = snippet.options.get("file")
    if name:
        code = apply_replacements(snippet.code, snippet.options.get("replace"), snippet.location)
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
        return

    timeout = float(snippet.options.get("timeout", DEFAULT_TIMEOUT_S))
    if snippet.language == "bash":
        script = prepare_shell(snippet)
        argv = ["bash", "-euo", "pipefail", "-c", script]
    else:
        script = apply_replacements(snippet.code, snippet.options.get("replace"), snippet.location)
        path = workdir / f"snippet_{snippet.page.stem}_{snippet.line}.py"
        path.write_text(script, encoding="utf-8")
        argv = [sys.executable, str(path)]
    try:
        result = subprocess.run(
            argv, cwd=workdir, env=snippet_environment(workdir), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        raise SnippetError(f"{snippet.location}: {snippet.language} block timed out after {timeout:.0f} s\n{script}") from error
    if result.returncode != 0:
        output = (result.stdout + result.stderr).splitlines()
        raise SnippetError(
            f"{snippet.location}: {snippet.language} block failed with exit status {result.returncode}\n"
            f"--- ran (in {workdir}) ---\n{script}\n--- last 60 lines of output ---\n" + "\n".join(output[-60:])
        )


def prepare_workdir(workdir: Path, repo: Path, overlays: Path) -> None:
    """Copy what the documented commands read: `configs/`, and the test overlays as `tiny/`."""
    shutil.copytree(repo / "configs", workdir / "configs")
    shutil.copytree(overlays, workdir / "tiny")
