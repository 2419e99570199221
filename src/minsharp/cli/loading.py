"""The network ``minsharp measure`` runs on: a zoo model or the user's factory, checked.

``--model NAME`` builds a model of :data:`minsharp.models.ZOO` for the data's input shape and
class count; ``--model package.module:function`` imports the user's factory (the current
directory first) and calls it with the ``--model-option`` pairs: both are
:func:`minsharp.models.make_model`, which the studies' ``--models`` use too.
:func:`check_model_fits` then runs two examples through it, so that a mismatch is reported
before any computing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from minsharp.data.sources import LoadedData
from minsharp.errors import ModelError
from minsharp.models.factory import import_factory, make_model

__all__ = ["check_model_fits", "import_factory", "make_model"]


def check_model_fits(model: nn.Module, data: LoadedData, name: str) -> int:
    """Run two examples through the model; the number of outputs per example.

    Raises:
        ModelError: the forward pass fails (shape mismatch…) or the outputs are not logits
            ``(N, K)`` with a column for every label in the data.
    """
    with torch.no_grad():
        try:
            logits = model(data.inputs[:2])
        except Exception as error:
            raise ModelError(
                f"model {name} cannot take the inputs of --data {data.record['spec']} (one "
                f"example of shape {tuple(data.inputs.shape[1:])}): {type(error).__name__}: "
                f"{error}"
            ) from error
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelError(f"model {name} returns {shape}; it must return logits of shape (N, K).")
    largest = int(data.labels.max())
    if largest >= logits.shape[1]:
        raise ModelError(
            f"model {name} has {logits.shape[1]} outputs, but --data {data.record['spec']} has "
            f"labels up to {largest}. Use --num-classes {largest + 1} (zoo models) or a "
            "matching factory."
        )
    return int(logits.shape[1])
