"""Data-parallel measurement on ``torch.distributed``.

Every data-summed quantity minsharp computes is a sum over examples divided by N: the
engine's per-parameter traces and diagonals, the loss, its gradient and Hessian-vector
products (:class:`~minsharp.objective.DatasetObjective`), the Fisher–Rao and relative
flatness sums. When a process group is initialised (``torchrun``), each rank computes the
sums of its share of the data and the shares are added with one all-reduce, so every rank
ends with the single-process result and the solvers after it (Newton, Lanczos, ascent) take
identical steps on every rank.

The contract:

* every rank passes the **same** data, in the same order (not a ``DistributedSampler``'s
  shard). The data are cut into chunks of ``batch_size`` examples exactly as in one process,
  and chunk ``i`` is computed by rank ``i mod world_size`` (:func:`owns`). Each chunk's sum
  is therefore bit-for-bit the single-process one; only the float64 addition of the chunk
  sums is reordered, which moves results by a few units of float64 rounding.
* every rank reads all of the data, so the checks on it (shapes, NaN, label range, empty
  data) fail the same way on every rank; only the forward and backward passes are shared.
* an error on one rank ends the computation on every rank (:func:`summed_over_ranks`):
  no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from minsharp.errors import MinsharpError

#: Environment variables torchrun sets in each worker.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def active() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of ranks sharing the work (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def owns(chunk: int) -> bool:
    """Whether this rank computes chunk number ``chunk`` (round robin over ranks)."""
    return chunk % world_size() == rank()


def summed_over_ranks(compute: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """``compute()``'s tensors summed over all ranks: ``Σ_r compute_r()``.

    ``compute`` runs on this rank's share of the data and returns tensors of the same names
    and shapes on every rank (float64 sums: the all-reduce adds them in place). If it raises
    on any rank, every rank raises: the failing ranks their own error, the others a
    :class:`MinsharpError` naming the failing rank and its message.
    """
    if not active():
        return dict(compute())
    failure: BaseException | None = None
    try:
        sums = dict(compute())
    except Exception as error:  # shared with the other ranks before it is raised
        failure = error
    _agree_on_failure(failure)
    for name in sorted(sums):  # the same order on every rank
        dist.all_reduce(sums[name], op=dist.ReduceOp.SUM)
    return sums


def _agree_on_failure(failure: BaseException | None) -> None:
    """Raise on every rank if ``failure`` is set on any; otherwise return on every rank."""
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    failed_anywhere = torch.tensor([0.0 if failure is None else 1.0], device=device)
    dist.all_reduce(failed_anywhere, op=dist.ReduceOp.MAX)
    if not failed_anywhere.item():
        return
    messages: list[str | None] = [None] * world_size()
    mine = None if failure is None else f"{type(failure).__name__}: {failure}"
    dist.all_gather_object(messages, mine)
    if failure is not None:
        raise failure
    failed = [(index, message) for index, message in enumerate(messages) if message is not None]
    if failed:
        index, message = failed[0]
        raise MinsharpError(f"rank {index} of {world_size()} failed: {message}")


def launched_by_torchrun() -> bool:
    """True inside a worker started by ``torchrun`` with more than one process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and (
        int(os.environ["WORLD_SIZE"]) > 1
    )


def local_device(device: str | torch.device) -> torch.device:
    """``device`` for this worker: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.

    Raises:
        MinsharpError: this worker's local rank has no GPU of its own.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None or not launched_by_torchrun():
        return device
    local_rank = int(os.environ["LOCAL_RANK"])
    if local_rank >= torch.cuda.device_count():
        raise MinsharpError(
            f"--device cuda under torchrun: local rank {local_rank} has no GPU of its own "
            f"(only {torch.cuda.device_count()} visible); start at most that many processes "
            "per node (--nproc_per_node)."
        )
    return torch.device("cuda", local_rank)


def start(device: torch.device) -> bool:
    """Join the process group torchrun describes; returns True if this call created it.

    The backend is NCCL for CUDA devices and gloo otherwise. Outside torchrun, or when a
    group already exists, nothing happens.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return False
    if not dist.is_available():
        raise MinsharpError(
            "this PyTorch build has no torch.distributed; run without torchrun, or install "
            "a build with distributed support."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def stop(*, wait: bool = True) -> None:
    """Leave the process group.

    ``wait``: first meet the other ranks at a barrier, so that none exits while the others
    still talk to it. After an error, ``wait=False`` leaves at once: a rank that failed
    before a collective must not wait for ranks stuck in it (torchrun then ends them).
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
