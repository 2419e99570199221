"""Label corruption: the paper's permutation rule and Zhang et al.'s uniform labels."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minsharp.data import CorruptedLabels, corrupt_labels, load_dataset
from minsharp.data.corruption import corruption_count
from minsharp.errors import DataError

RATIOS = [round(0.1 * step, 1) for step in range(11)]


def balanced(n: int = 1000, classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % classes


@pytest.mark.parametrize("rule", ["permute", "uniform"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_exact_count_and_untouched_rest(rule, ratio) -> None:
    labels = balanced(997)
    out = corrupt_labels(labels, ratio, rule=rule, num_classes=10, seed=1)
    assert isinstance(out, CorruptedLabels)
    k = math.floor(ratio * 997 + 0.5)
    assert out.record["count"] == k == len(out.indices)
    assert len(torch.unique(out.indices)) == k  # without replacement
    assert torch.equal(out.indices, out.indices.sort().values)
    assert out.labels.dtype == torch.int64 and out.labels.shape == labels.shape
    untouched = torch.ones(997, dtype=torch.bool)
    untouched[out.indices] = False
    assert torch.equal(out.labels[untouched], labels[untouched])
    changed = int((out.labels != labels).sum())
    assert out.record["changed"] == changed
    assert out.record["changed_fraction"] == changed / 997
    assert changed <= k
    assert json.loads(json.dumps(out.record, allow_nan=False)) == out.record


def test_rounding_is_half_up() -> None:
    assert corruption_count(0.5, 5) == 3
    assert corruption_count(0.25, 10) == 3
    assert corruption_count(0.3, 10) == 3  # 0.3·10 = 3.0000000000000004
    assert corruption_count(0.7, 10) == 7
    assert corruption_count(1.0, 7) == 7
    assert corruption_count(0.0, 7) == 0


@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0])
def test_permute_preserves_the_label_multiset(ratio) -> None:
    labels = torch.randint(10, (500,), generator=torch.Generator().manual_seed(0))
    out = corrupt_labels(labels, ratio, num_classes=10, seed=3)
    before, after = (torch.bincount(y, minlength=10) for y in (labels, out.labels))
    assert torch.equal(after, before)
    # also among the chosen examples alone: their labels are permuted among themselves
    assert torch.equal(out.labels[out.indices].sort().values, labels[out.indices].sort().values)


def test_permute_changes_about_the_expected_fraction() -> None:
    """With r = 1 on balanced labels, a label stays only if σ maps it into its own class."""
    out = corrupt_labels(balanced(10_000), 1.0, num_classes=10, seed=0)
    assert out.record["count"] == 10_000
    assert out.record["changed_fraction"] == pytest.approx(0.9, abs=0.02)


def test_uniform_labels_are_uniform() -> None:
    labels = torch.zeros(20_000, dtype=torch.long)
    out = corrupt_labels(labels, 0.5, rule="uniform", num_classes=4, seed=0)
    counts = torch.bincount(out.labels[out.indices], minlength=4).float()
    assert counts.sum() == 10_000
    # each class ≈ 2500 ± 4σ (σ = √(10 000·¼·¾) ≈ 43)
    assert torch.all((counts - 2500).abs() < 175)
    assert out.record["changed_fraction"] == pytest.approx(0.5 * 0.75, abs=0.01)
    assert out.labels.max() < 4 and out.labels.min() >= 0
    assert "uniformly random labels from 0..3" in out.record["description"]


def test_ratio_zero_is_the_identity() -> None:
    labels = balanced(50)
    for rule in ("permute", "uniform"):
        out = corrupt_labels(labels, 0.0, rule=rule, num_classes=10, seed=0)
        assert torch.equal(out.labels, labels)
        assert out.indices.numel() == 0
        assert out.record["changed"] == 0


@pytest.mark.parametrize("rule", ["permute", "uniform"])
def test_reproducible_with_seed_and_different_with_another(rule) -> None:
    labels = balanced(400)
    first = corrupt_labels(labels, 0.4, rule=rule, num_classes=10, seed=11)
    again = corrupt_labels(labels, 0.4, rule=rule, num_classes=10, seed=11)
    other = corrupt_labels(labels, 0.4, rule=rule, num_classes=10, seed=12)
    assert torch.equal(first.labels, again.labels)
    assert torch.equal(first.indices, again.indices)
    assert first.record == again.record
    assert not torch.equal(first.indices, other.indices)
    assert not torch.equal(first.labels, other.labels)


def test_input_is_not_modified_and_device_kept() -> None:
    labels = balanced(100).to(torch.int32)
    before = labels.clone()
    out = corrupt_labels(labels, 0.8, num_classes=10, seed=0)
    assert torch.equal(labels, before)
    assert out.labels.device == labels.device


def test_test_set_is_never_touched() -> None:
    splits = load_dataset("digits", train_size=200, test_size=100, seed=0)
    test_before = splits.test_labels.clone()
    out = corrupt_labels(splits.train_labels, 1.0, num_classes=splits.num_classes, seed=0)
    assert torch.equal(splits.test_labels, test_before)
    assert out.labels.shape == splits.train_labels.shape
    assert out.record["num_examples"] == 200


def test_record_fields() -> None:
    out = corrupt_labels(balanced(10), 0.3, rule="uniform", num_classes=10, seed=5)
    assert out.record["rule"] == "uniform"
    assert out.record["ratio"] == 0.3
    assert out.record["seed"] == 5
    assert out.record["num_examples"] == 10
    assert out.record["num_classes"] == 10
    assert out.record["count"] == 3
    assert out.record["chosen_fraction"] == 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, r"ratio must be a number in \[0, 1\]"),
        ({"ratio": 1.5}, r"ratio must be a number in \[0, 1\]"),
        ({"ratio": float("nan")}, r"ratio must be a number in \[0, 1\]"),
        ({"ratio": "0.5"}, r"ratio must be a number in \[0, 1\]"),
        ({"ratio": True}, r"ratio must be a number in \[0, 1\]"),
        ({"rule": "shuffle"}, "rule must be 'permute' or 'uniform'"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"num_classes": 5}, r"labels must lie in 0\.\.4"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"labels": torch.zeros(3, 2, dtype=torch.long)}, "1-D tensor"),
        ({"labels": torch.zeros(3)}, "integer class indices"),
        ({"labels": torch.tensor([0, -1, 2])}, "negative labels"),
    ],
)
def test_invalid_arguments(kwargs, message) -> None:
    arguments = {"labels": balanced(20), "ratio": 0.5, "num_classes": 10, "seed": 0} | kwargs
    labels = arguments.pop("labels")
    ratio = arguments.pop("ratio")
    with pytest.raises(DataError, match=message):
        corrupt_labels(labels, ratio, **arguments)
