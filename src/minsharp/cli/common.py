"""What every subcommand of the command line shares: the ``--device`` flag."""

from __future__ import annotations

import re

import torch

from minsharp.errors import MinsharpError


def resolve_device(text: str) -> torch.device:
    """The ``--device``: ``cpu``, ``cuda`` or ``cuda:N``, checked to exist.

    Raises:
        MinsharpError: another name, or CUDA requested where there is none.
    """
    match = re.fullmatch(r"cpu|cuda(:(\d+))?", text.strip())
    if match is None:
        raise MinsharpError(f"--device must be cpu, cuda or cuda:N; got {text!r}.")
    device = torch.device(text.strip())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch {torch.__version__} was built without CUDA"
                if torch.version.cuda is None
                else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise MinsharpError(f"--device {text}: CUDA is not available: {why}. Use --device cpu.")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise MinsharpError(
                f"--device {text}: there are only {torch.cuda.device_count()} CUDA devices."
            )
    return device
