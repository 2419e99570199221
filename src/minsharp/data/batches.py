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
from torch.utils.data.distributed import DistributedSampler

from minsharp import distributed
from minsharp.errors import DataError
from minsharp.options import integer
from minsharp.tensors import all_finite, check_labels

_ZERO_D = "data: batch {position} is a 0-d tensor; inputs need a leading example axis."
_FORMS = "a tensor X, a tuple (X, y), or an iterable/DataLoader of such batches"


def _is_single_batch(data: Any) -> bool:
    return isinstance(data, Tensor) or (
        isinstance(data, tuple) and 1 <= len(data) <= 2 and all(isinstance(t, Tensor) for t in data)
    )


def _check_whole(data: Any) -> None:
    """Refuse a loader sharded by a ``DistributedSampler``: minsharp shards the data itself."""
    if distributed.active() and isinstance(getattr(data, "sampler", None), DistributedSampler):
        raise DataError(
            "data: this DataLoader draws from a DistributedSampler, so each rank would see "
            "only its own shard. Under torch.distributed pass every rank the whole data set "
            "(a plain DataLoader): minsharp splits the batches across ranks itself."
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


def batch_count(data: Any, batch_size: int) -> int | None:
    """How many batches :func:`input_batches` yields for ``data``, where known beforehand.

    Known for a single batch and for a list or tuple of batches (the total of a progress
    bar); ``None`` for other iterables (a generator, a ``DataLoader``) and for malformed
    data or batch sizes, which :func:`input_batches` then reports.

    Example:
        >>> batch_count(torch.zeros(10, 3), 4), batch_count([torch.zeros(5, 3)] * 2, 4)
        (3, 4)
    """
    batches = [data] if _is_single_batch(data) else data
    valid_size = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0
    if not valid_size or not isinstance(batches, (list, tuple)):
        return None  # input_batches refuses a bad batch_size
    try:
        sizes = [_inputs_of(batch, position).shape[0] for position, batch in enumerate(batches)]
    except (DataError, IndexError):  # malformed or 0-d: input_batches says so
        return None
    return sum(-(-size // batch_size) for size in sizes)


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
    integer("batch_size", batch_size, minimum=1, error=DataError)
    _check_whole(data)
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
            raise DataError(_ZERO_D.format(position=position))
        if inputs.is_complex() or inputs.dtype == torch.bool:
            raise DataError(
                f"data: batch {position} has dtype {inputs.dtype}; inputs must be real floating "
                "point (or integer indices for embedding layers)."
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


def labelled_batches(
    data: Any,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, labels)`` batches of at most ``batch_size`` examples on ``device``.

    For the measures whose value depends on the labels (loss-based ones). ``data`` is a tuple
    ``(X, y)`` or an iterable of such batches; labels must be integer class indices with one
    per example. Raises :class:`DataError` otherwise, and as :func:`input_batches` does.
    """
    integer("batch_size", batch_size, minimum=1, error=DataError)
    _check_whole(data)
    if isinstance(data, Tensor) or (isinstance(data, tuple) and len(data) == 1):
        raise DataError(
            "data: this measure depends on the labels, but only inputs were given; "
            "pass (X, y) or an iterable/DataLoader of (X, y) batches."
        )
    batches: Iterable[Any] = [data] if _is_single_batch(data) else data
    if not isinstance(batches, Iterable) or isinstance(batches, (str, bytes, dict)):
        raise DataError(f"data: got a {type(data).__name__}; expected (X, y) batches.")
    seen_examples = 0
    for position, batch in enumerate(batches):
        if not (
            isinstance(batch, (tuple, list))
            and len(batch) >= 2
            and all(isinstance(t, Tensor) for t in batch[:2])
        ):
            raise DataError(
                f"data: batch {position} is not an (X, y) pair of tensors; this measure "
                "depends on the labels, so every batch needs them."
            )
        if batch[0].dim() == 0:
            raise DataError(_ZERO_D.format(position=position))
        labels = check_labels(batch[1], batch[0].shape[0], f"data: batch {position}")
        if labels.numel() == 0:
            continue
        inputs = input_batches(batch[0], batch_size, device, dtype)
        if labels.is_inference():  # as for the inputs: autograd refuses to save those
            labels = labels.clone()
        labels = labels.to(device=device, dtype=torch.long)
        for start, chunk in zip(range(0, labels.shape[0], batch_size), inputs, strict=False):
            seen_examples += chunk.shape[0]
            yield chunk, labels[start : start + chunk.shape[0]]
    if seen_examples == 0:
        raise DataError("data holds no examples; expected (X, y) with at least one example.")


def check_label_range(largest: int, num_classes: int) -> None:
    """Raise :class:`DataError` unless the largest label fits a model with ``num_classes``."""
    if largest >= num_classes:
        raise DataError(
            f"data: label {largest} is out of range for a model with {num_classes} output "
            f"classes; labels must lie in 0..{num_classes - 1}."
        )
