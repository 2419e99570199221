"""One rank of the data-parallel tests: run under ``torchrun --nproc_per_node=2``.

``python tests/distributed_worker.py OUT measures`` computes every registered measure and the
exact Hessian diagonal on fixed seeded networks and data (:func:`cases`), in float32 and
float64, and writes ``OUT/rank<r>.json``. ``... OUT failure`` records what each rank raises
for a DataLoader sharded by a DistributedSampler, and when rank 1's engine fails mid-pass.
``tests/test_distributed.py`` compares the files with the single-process values.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tests.symmetries import labelled_data, network
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import minsharp
from minsharp import distributed
from minsharp.curvature import engine
from minsharp.measures import available, spec

#: Examples and batch size: 7 chunks, so the ranks hold 4 and 3; TINY fits one chunk, so
#: rank 1 holds none.
EXAMPLES, TINY, BATCH_SIZE = 203, 20, 32

#: Options that keep the iterative measures quick (the comparison does not depend on them).
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "hutchinson_trace": {"samples": 10},
    "adaptive_sharpness_average": {"samples": 10},
    "pac_bayes_flatness": {"samples": 4, "metric": "loss"},
}


def cases() -> Iterator[tuple[str, nn.Module, tuple[torch.Tensor, torch.Tensor], str | None]]:
    """``(case name, model, data, measure name or None for the diagonal)``, in both dtypes."""
    for dtype in (torch.float64, torch.float32):
        tag = str(dtype).removeprefix("torch.")
        for name in available():
            batchnorm = "batchnorm" in spec(name).requires
            model = network("mlp", batchnorm=batchnorm, seed=1).to(dtype)
            inputs, labels = labelled_data("mlp", seed=2, examples=EXAMPLES)
            yield f"{name}/{tag}", model, (inputs.to(dtype), labels), name
        model = network("cnn", batchnorm=False, seed=3).to(dtype)
        inputs, labels = labelled_data("cnn", seed=4, examples=EXAMPLES)
        yield f"diagonal/{tag}", model, (inputs.to(dtype), labels), None
        tiny = labelled_data("cnn", seed=5, examples=TINY)
        yield f"tiny_trace/{tag}", model, (tiny[0].to(dtype), tiny[1]), "hessian_trace"


def evaluate(model: nn.Module, data: Any, name: str | None) -> float | list[float]:
    """The measure's value, or the flattened Hessian diagonal when ``name`` is None."""
    if name is None:
        diagonal = minsharp.hessian_diagonal(model, data, batch_size=BATCH_SIZE)
        return torch.cat([t.reshape(-1) for t in diagonal.by_parameter.values()]).tolist()
    options = {"batch_size": BATCH_SIZE, **FAST_OPTIONS.get(name, {})}
    return minsharp.measure(name, model, data, **options).value


def raised(compute: Callable[[], object]) -> dict[str, str]:
    """The type and message of what ``compute()`` raises."""
    try:
        compute()
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": "none"}


def failures() -> dict[str, dict[str, str]]:
    """What each rank raises for a sharded loader, and when rank 1's engine fails mid-pass."""
    model = network("mlp", batchnorm=False, seed=1)
    inputs, labels = labelled_data("mlp", seed=2, examples=EXAMPLES)
    dataset = TensorDataset(inputs, labels)
    sharded = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset))
    record = {"sampler": raised(lambda: minsharp.hessian_trace(model, sharded))}
    if dist.get_rank() == 1:

        def broken(*args: Any) -> Any:
            raise RuntimeError("injected failure")

        engine._batch_sums = broken
    record["injected"] = raised(lambda: minsharp.hessian_trace(model, inputs, batch_size=8))
    return record


def main() -> None:
    out, what = Path(sys.argv[1]), sys.argv[2]
    assert distributed.start(torch.device("cpu")), "run me under torchrun with 2 processes"
    if what == "measures":
        record: dict[str, Any] = {
            case: evaluate(model, data, name) for case, model, data, name in cases()
        }
    else:
        record = failures()
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    distributed.stop()


if __name__ == "__main__":
    main()
