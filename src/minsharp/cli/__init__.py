"""The ``minsharp`` command line: ``measure``, ``measures``, ``study``, ``report``, ``demo``.

The names the former single module ``minsharp/cli.py`` offered still resolve here, from
their new homes (:data:`MOVED` says where each one lives now).
"""

from __future__ import annotations

import importlib
from typing import Any

from minsharp.cli.main import build_parser, main

__all__ = ["build_parser", "main"]

#: Former ``minsharp.cli`` names and the module that holds each one now.
MOVED = {
    **dict.fromkeys(
        (
            "DEFAULT_MEASURES",
            "MAX_INFERRED_CLASSES",
            "measure_command",
            "measure_options",
            "parse_key_values",
            "parse_value",
            "run_measures",
            "select_measures",
        ),
        "minsharp.cli.measure",
    ),
    **dict.fromkeys(
        ("certificate_summary", "format_number", "list_measures", "print_table"),
        "minsharp.cli.printing",
    ),
    **dict.fromkeys(("check_model_fits", "import_factory", "make_model"), "minsharp.cli.loading"),
    "LoadedData": "minsharp.data.sources",
    "load_data": "minsharp.data.sources",
}


def __getattr__(name: str) -> Any:
    if name not in MOVED:
        raise AttributeError(f"module 'minsharp.cli' has no attribute {name!r}")
    module = importlib.import_module(MOVED[name])
    # load_data became the data-spec parser's load_examples, with the same arguments
    return getattr(module, "load_examples" if name == "load_data" else name)
