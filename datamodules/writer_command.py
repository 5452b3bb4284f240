"""Command-line plumbing shared by the shard writers of ``unisep data`` (images, videos, molecules).

Each writer module defines ``add_arguments(parser)`` and ``run(args)``, which ``cli.py``
calls, and a ``main(argv)`` for ``python -m``. This module contains the parts they share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` and ``--no-progress``, the options every writer has."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard set in OUT")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def describe_skipped(skipped: dict[str, int], noun: str = "skipped") -> str:
    """Return e.g. `3 skipped: 2 not an image file, 1 unreadable image`, reasons by count then name."""
    total = sum(skipped.values())
    if not total:
        return f"0 {noun}"
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items(), key=lambda item: (-item[1], item[0])))
    return f"{total} {noun}: {reasons}"


def run_writer(write: Callable[[], None]) -> int:
    """Run a writer's ``write()`` and return the exit status of the command.

    ``write`` writes the shards and prints its summary lines. Writer records are shown
    at INFO level unless the caller has configured logging. A missing input, an existing
    shard set or an invalid setting prints ``error: ...`` to stderr and returns 1
    instead of a traceback.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        write()
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def writer_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv`` with a writer's options and run the writer. Each writer's ``main`` calls this.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.
        prog: Program name in usage lines, e.g. ``"unisep data images"``.
        doc: The writer module's docstring; its first line becomes the description.
        add_arguments: The writer's ``add_arguments``.
        run: The writer's ``run``.
    """
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0]))
    return run(parser.parse_args(argv))
