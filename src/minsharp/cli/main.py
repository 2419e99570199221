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
from minsharp.io import package_version


class _Parser(argparse.ArgumentParser):
    """A parser that reports unknown arguments itself, with its own (subcommand's) usage.

    argparse hands a subcommand's unknown arguments back to the top-level parser, which
    would print the top-level usage; the subcommands' parsers (of this class too) refuse
    them first.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse ``args``; an unknown one ends the command with this parser's usage."""
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minsharp`` command."""
    parser = _Parser(
        prog="minsharp", description="Scale-invariant sharpness of neural-network minima."
    )
    parser.add_argument("--version", action="version", version=f"minsharp {package_version()}")
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
