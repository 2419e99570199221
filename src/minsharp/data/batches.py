"""Turn the ``data`` argument of every public function into bounded input batches.

Accepted forms, checked in this order:

* a tensor ``X`` — the inputs of one batch;
* a tuple ``(X, y)`` or ``(X,)`` of tensors — one batch (labels are ignored);
* any other iterable (a list of batches, a generator, a ``DataLoader``) whose items are
  tensors ``X`` or sequences whose first item is ``X``.

Curvature does not depend on labels, so only inputs are yielded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from minsharp.errors import DataError
from minsharp.tensors import all_finite

_FORMS = "a tensor X, a tuple (X, y), or an iterable/DataLoader of such batches"


def _is_single_batch(data: Any) -> bool:
    return isinstance(data, Tensor) or (
        isinstance(data, tuple) and 1 <= len(data) <= 2 and all(isinstance(t, Tensor) for t in data)
    )


def _inputs_of(batch: Any, position: int) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise DataError(
        f"data: batch {position} is a {type(batch).__name__}; expected {_FORMS}. "
        "Wrap your data as (X, y) tensors or a torch DataLoader."
    )


def input_batches(
    data: Any,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[Tensor]:
    """Yield input batches of at most ``batch_size`` examples on ``device``.

    Floating inputs are cast to ``dtype`` (the model's); integer inputs are left as they are.
    Raises :class:`DataError` for empty data, malformed batches and non-finite inputs.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if _is_single_batch(data):
        batches: Iterable[Any] = [data]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        batches = data
    else:
        raise DataError(f"data: got a {type(data).__name__}; expected {_FORMS}.")

    seen_examples = 0
    for position, batch in enumerate(batches):
        inputs = _inputs_of(batch, position)
        if inputs.is_inference():  # made under torch.inference_mode(): autograd refuses those
            inputs = inputs.clone()
        if inputs.dim() == 0:
            raise DataError(
                f"data: batch {position} is a 0-d tensor; inputs need a leading example axis."
            )
        if inputs.is_floating_point():
            inputs = inputs.to(device=device, dtype=dtype)
            if not all_finite(inputs):
                raise DataError(
                    f"data: batch {position} contains NaN or infinite inputs; "
                    "clean or drop those examples."
                )
        else:
            inputs = inputs.to(device=device)
        for start in range(0, inputs.shape[0], batch_size):
            seen_examples += min(batch_size, inputs.shape[0] - start)
            yield inputs[start : start + batch_size]
    if seen_examples == 0:
        raise DataError(f"data holds no examples; expected {_FORMS} with at least one example.")
