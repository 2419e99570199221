"""The ``minsharp`` command line: ``measure``, ``measures``, ``study``, ``report``, ``demo``.

``minsharp measure`` and ``minsharp measures`` live in :mod:`minsharp.cli.measure`;
``minsharp study randomized-labels|batch-size|bn-sharpness``, ``minsharp report`` and
``minsharp demo`` (the randomized-label study's demo preset) in :mod:`minsharp.cli.study`.
Every problem with the arguments, files, model or data ends the command with exit status 2
and one ``minsharp: error: …`` line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from minsharp.cli.measure import add_measure_parsers
from minsharp.cli.study import add_study_parsers
from minsharp.errors import MinsharpError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minsharp`` command."""
    parser = argparse.ArgumentParser(
        prog="minsharp", description="Scale-invariant sharpness of neural-network minima."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_study_parsers(commands)
    add_measure_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except MinsharpError as error:
        print(f"minsharp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minsharp: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into `head` or similar, which exited
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
