"""The ``minsharp`` command line: ``measure``, ``measures``, ``study``, ``report``, ``demo``."""

from minsharp.cli.main import main

__all__ = ["main"]
