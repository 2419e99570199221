"""Label corruption for the randomized-label study: the paper's rule and Zhang et al.'s.

Given n training labels and a ratio r ∈ [0, 1], exactly k = round(r·n) examples are chosen
uniformly at random without replacement (round half up: k = ⌊r·n + ½⌋). Then

* ``"permute"`` (Ibayashi, Hamaguchi, Imaizumi 2021, App. E; theory §6): the chosen examples'
  labels are permuted among themselves by a uniformly random permutation σ of the k
  positions, y'[c_i] = y[c_σ(i)]. The multiset of labels (the class counts) is unchanged;
  some chosen labels stay the same by chance (a fixed point of σ, or a swap within a class).
* ``"uniform"`` (Zhang, Bengio, Hardt, Recht, Vinyals 2017, "partially corrupted labels"):
  each chosen example gets a label drawn uniformly from {0, …, K−1}, which equals the old one
  with probability 1/K. Zhang et al. corrupt each example independently with probability r;
  here exactly k are chosen, so that every ratio corrupts the same number of examples.

Only training labels are ever passed in: the test set stays clean. Everything is drawn from
``torch.Generator().manual_seed(seed)``, so a seed reproduces the corruption exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from minsharp.errors import DataError
from minsharp.options import choice, integer, number
from minsharp.tensors import check_labels

#: The corruption rules.
RULES: tuple[str, ...] = ("permute", "uniform")


@dataclass(frozen=True)
class CorruptedLabels:
    """Corrupted training labels and what was done to them.

    Attributes:
        labels: the new labels, int64, same shape and device as the input (a new tensor).
        indices: the chosen (corrupted) positions, int64, sorted; ``round(r·n)`` of them.
        record: JSON-able: rule, ratio, seed, num_examples (n), num_classes, count (k),
            changed (how many labels actually differ from the originals), changed_fraction
            (changed / n), chosen_fraction (k / n), and description (one sentence).
    """

    labels: Tensor
    indices: Tensor
    record: dict[str, Any]


def corruption_count(ratio: float, n: int) -> int:
    """The number of chosen examples, k = round(r·n) with halves up: ⌊r·n + ½⌋ (0.5 of 5 is 3)."""
    return min(n, math.floor(ratio * n + 0.5))


def corrupt_labels(
    labels: Tensor,
    ratio: float,
    *,
    rule: Literal["permute", "uniform"] = "permute",
    num_classes: int,
    seed: int,
) -> CorruptedLabels:
    """Corrupt a fraction ``ratio`` of the training labels by ``rule`` (see the module text).

    Args:
        labels: 1-D integer tensor of training class indices in 0..K−1 (never the test set).
            It is not modified.
        ratio: r ∈ [0, 1]; k = round(r·n) examples are chosen (:func:`corruption_count`).
        rule: ``"permute"`` (the Minimum Sharpness paper's rule) or ``"uniform"`` (Zhang et
            al.'s random labels).
        num_classes: K, the classes ``"uniform"`` draws from; labels must lie in 0..K−1.
        seed: seed of the generator that picks the examples and their new labels.

    Returns:
        The :class:`CorruptedLabels`.

    Raises:
        DataError: ratio outside [0, 1] or not a number, unknown rule, labels not a 1-D
            integer tensor, labels outside 0..K−1, K < 1, or a seed that is not an integer.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
        >>> out = corrupt_labels(y, 0.5, num_classes=5, seed=0)
        >>> out.record["count"], len(out.indices)
        (5, 5)
        >>> sorted(out.labels.tolist()) == sorted(y.tolist())  # permute keeps the class counts
        True
    """
    original = _checked_labels(labels, ratio, rule, num_classes, seed)
    n = original.numel()
    generator = torch.Generator().manual_seed(seed)
    count = corruption_count(float(ratio), n)
    chosen = torch.randperm(n, generator=generator)[:count]
    corrupted = original.clone()
    if rule == "permute":
        corrupted[chosen] = original[chosen[torch.randperm(count, generator=generator)]]
    else:
        corrupted[chosen] = torch.randint(num_classes, (count,), generator=generator)
    indices = torch.sort(chosen).values
    changed = int((corrupted != original).sum())
    record = _record(rule, ratio, seed, n, num_classes, count, changed)
    return CorruptedLabels(corrupted.to(device=labels.device), indices, record)


def _checked_labels(labels: Tensor, ratio: float, rule: str, num_classes: int, seed: int) -> Tensor:
    """The labels as int64 on the CPU, after checking every argument of corrupt_labels."""
    number("ratio", ratio, at_least=0, at_most=1, error=DataError)
    choice("rule", rule, RULES, error=DataError)
    integer("num_classes", num_classes, minimum=1, error=DataError)
    integer("seed", seed, error=DataError)
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(f"labels must be a 1-D tensor of class indices; got {shape}.")
    check_labels(labels, labels.shape[0], "corrupt_labels")
    original = labels.detach().to("cpu", torch.long)
    if original.numel() and (int(original.min()) < 0 or int(original.max()) >= num_classes):
        raise DataError(
            f"labels must lie in 0..{num_classes - 1} (num_classes = {num_classes}); found "
            f"{int(original.min())}..{int(original.max())}."
        )
    return original


def _record(
    rule: str, ratio: float, seed: int, n: int, num_classes: int, count: int, changed: int
) -> dict[str, Any]:
    """The JSON-able record of a corruption, with its one-sentence description."""
    description = (
        f"{count} of {n} training labels (ratio {ratio}) "
        + (
            "permuted among themselves"
            if rule == "permute"
            else f"replaced by uniformly random labels from 0..{num_classes - 1}"
        )
        + f" (seed {seed}); {changed} labels actually changed"
    )
    return {
        "rule": rule,
        "ratio": float(ratio),
        "seed": seed,
        "num_examples": n,
        "num_classes": num_classes,
        "count": count,
        "chosen_fraction": count / n if n else 0.0,
        "changed": changed,
        "changed_fraction": changed / n if n else 0.0,
        "description": description,
    }
