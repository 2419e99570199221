"""BN-sharpness training: the combined gradient by hand, the SGD step, and the study end to end."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests import studies
from tests.studies import PNG_MAGIC, TrainingSpy, command_round_trip, quiet
from torch import nn
from torch.func import functional_call

from minsharp.cli.main import main
from minsharp.errors import MinsharpError, ModelError
from minsharp.measures.bn_sharpness import batchnorm_rows
from minsharp.study.bn_training.report import write_report
from minsharp.study.bn_training.study import (
    BN_SHARPNESS,
    BNSharpnessConfig,
    calibrated_copy,
    paper_preset,
    preset,
)
from minsharp.study.core import runner as base
from minsharp.study.core import store
from minsharp.study.core.config import ModelPlan
from minsharp.training import TrainingConfig, train_classifier
from minsharp.training.bn_penalty import RADIUS_SEED_OFFSET, BNSharpnessPenalty, combined_gradient


def tiny_net() -> nn.Sequential:
    """Linear 3→4 → BN → ReLU → Linear 4→2, float64, with non-trivial affine parameters."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.3, 0.3)
    return net.train()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    return inputs, torch.tensor([0, 1, 1, 0, 1, 0])


def loss_and_gradient(net: nn.Module, point: dict, inputs, labels) -> tuple[float, dict]:
    """L and ∇L at ``point`` by autograd, batch statistics, on copies of the buffers."""
    leaves = {name: value.detach().clone().requires_grad_() for name, value in point.items()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    loss = F.cross_entropy(functional_call(net, {**leaves, **buffers}, (inputs,)), labels)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), dict(zip(leaves, grads, strict=True))


def hand_direction(point: dict, gradient: dict) -> dict:
    """v by hand: rows of the BN-fed weight, entries of its bias, other tensors whole."""
    direction = {}
    weight, grad = point["0.weight"], gradient["0.weight"]
    direction["0.weight"] = torch.stack(
        [weight[i].norm() * grad[i] / grad[i].norm() for i in range(weight.shape[0])]
    )
    bias, bias_grad = point["0.bias"], gradient["0.bias"]
    direction["0.bias"] = torch.stack(
        [bias[i].abs() * bias_grad[i] / bias_grad[i].abs() for i in range(bias.shape[0])]
    )
    for name in ("1.weight", "1.bias", "3.weight", "3.bias"):
        direction[name] = point[name].norm() * gradient[name] / gradient[name].norm()
    return direction


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0, 1.7])
def test_the_combined_gradient_is_the_hand_computed_one(weight):
    net, (inputs, labels) = tiny_net(), tiny_batch()
    point = {name: p.detach().clone() for name, p in net.named_parameters()}
    _, gradient = loss_and_gradient(net, point, inputs, labels)
    direction = hand_direction(point, gradient)
    radius = 0.037
    shifted = {name: point[name] + radius * direction[name] for name in point}
    _, gradient_shifted = loss_and_gradient(net, shifted, inputs, labels)
    expected = {
        name: (1 - weight) * gradient[name] + weight * gradient_shifted[name] for name in point
    }
    plain = copy.deepcopy(net)
    F.cross_entropy(plain(inputs), labels)  # one plain forward: the running statistics it leaves

    rows = batchnorm_rows(net, inputs)
    assert rows == {"0.weight": "0.bias"}
    step = combined_gradient(net, inputs, labels, rows=rows, weight=weight, radius=radius)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-12, atol=1e-14)
        assert torch.equal(p.detach(), point[name])  # the parameters are left as they were
    for name, buffer in net.named_buffers():  # updated by the pass at w only
        assert torch.equal(buffer, dict(plain.named_buffers())[name])
    assert step.radius == radius
    assert float(step.perturbed_loss) > float(step.loss)  # v points uphill


def test_one_training_step_is_sgd_on_the_combined_gradient():
    inputs, labels = tiny_batch()
    net = tiny_net()
    config = TrainingConfig(
        epochs=1,
        batch_size=len(labels),
        lr=0.2,
        momentum=0.0,
        weight_decay=0.0,
        lr_decay=0.0,
        seed=11,
        bn_sharpness_weight=0.5,
        bn_sharpness_delta=0.1,
    )
    reference = copy.deepcopy(net)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(11))
    radius = 0.1 * float(
        torch.rand(
            (),
            generator=torch.Generator().manual_seed(11 + RADIUS_SEED_OFFSET),
            dtype=torch.float64,
        )
    )
    rows = batchnorm_rows(reference, inputs)
    combined_gradient(reference, inputs[order], labels[order], rows=rows, weight=0.5, radius=radius)
    expected = {name: p.detach() - 0.2 * p.grad for name, p in reference.named_parameters()}
    history = train_classifier(net, inputs, labels, config)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)
    assert history.steps == [1] and len(history.step_seconds) == 1


def test_the_radii_are_uniform_on_zero_delta_and_reproducible():
    net, (inputs, _) = tiny_net(), tiny_batch()
    first = BNSharpnessPenalty(net, inputs, weight=0.5, delta=0.2, seed=4)
    second = BNSharpnessPenalty(net, inputs, weight=0.5, delta=0.2, seed=4)
    draws = [first.draw_radius() for _ in range(200)]
    assert draws == [second.draw_radius() for _ in range(200)]
    assert all(0 <= t < 0.2 for t in draws) and 0.08 < sum(draws) / 200 < 0.12


def test_penalised_training_is_deterministic_and_differs_from_sgd():
    inputs = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = (inputs[:, 0] > 0).long()
    config = TrainingConfig(epochs=2, batch_size=8, lr=0.1, seed=2, bn_sharpness_weight=0.5)
    nets = [tiny_net() for _ in range(3)]
    train_classifier(nets[0], inputs, labels, config)
    train_classifier(nets[1], inputs, labels, config)
    train_classifier(nets[2], inputs, labels, dataclasses.replace(config, bn_sharpness_weight=0.0))
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0][3].weight, nets[2][3].weight)


def test_the_penalty_needs_batchnorm_and_valid_settings():
    inputs = torch.randn(8, 3)
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="needs a network with batch-norm layers"):
        train_classifier(
            plain, inputs, torch.zeros(8).long(), TrainingConfig(bn_sharpness_weight=1.0)
        )
    with pytest.raises(MinsharpError, match="bn_sharpness_weight must be a non-negative number"):
        TrainingConfig(bn_sharpness_weight=-0.1)
    with pytest.raises(MinsharpError, match=r"bn_sharpness_delta must be a number in \(0, 1\]"):
        TrainingConfig(bn_sharpness_weight=0.5, bn_sharpness_delta=0.0)


def test_plain_sgd_configs_keep_their_old_dictionary():
    assert "bn_sharpness_weight" not in TrainingConfig().as_dict()
    penalised = TrainingConfig(bn_sharpness_weight=0.5, bn_sharpness_delta=0.1).as_dict()
    assert penalised["bn_sharpness_weight"] == 0.5 and penalised["bn_sharpness_delta"] == 0.1
    assert TrainingConfig(**penalised) == TrainingConfig(
        bn_sharpness_weight=0.5, bn_sharpness_delta=0.1
    )


def test_calibrated_copy_takes_the_training_set_statistics():
    net = tiny_net()
    inputs, _ = tiny_batch()
    twin = calibrated_copy(net, inputs)
    hidden = net[0](inputs).detach()
    torch.testing.assert_close(twin[1].running_mean, hidden.mean(0))
    torch.testing.assert_close(twin[1].running_var, hidden.var(0, unbiased=True))
    assert not twin.training and net.training
    assert twin[1].momentum == net[1].momentum
    assert torch.equal(net[1].running_mean, torch.zeros(4))  # the original is untouched


# --------------------------------------------------------------------------- the study


def tiny(**changes) -> BNSharpnessConfig:
    """Digits, an MLP 64-8-10 with batch-norm, λ ∈ {0, 0.5}, 2 seeds, 2 epochs."""
    return studies.tiny(
        BNSharpnessConfig,
        changes,
        weights=(0.0, 0.5),
        delta=0.05,
        seeds=(0, 1),
        models=(ModelPlan("mlp_bn", "mlp", {"hidden": [8], "batchnorm": True}),),
        training={"epochs": 2, "batch_size": 32, "lr": 0.05},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return studies.finished_study(tmp_path_factory, BN_SHARPNESS, tiny())


def test_the_study_pairs_runs_by_seed_and_records_before_after_and_cost(finished):
    records = store.read_records(finished, BN_SHARPNESS)
    assert list(records.results) == [
        "mlp_bn_l0_s0",
        "mlp_bn_l0.5_s0",
        "mlp_bn_l0_s1",
        "mlp_bn_l0.5_s1",
    ]
    results = records.results
    for result in results.values():
        assert result["status"] == "complete" and result["seconds_per_step"] > 0
        assert result["steps"] == 2 * math.ceil(120 / 32)
        assert math.isfinite(result["measures"]["bn_sharpness"]["value"])
        assert result["measures"]["bn_sharpness"]["options"]["delta"] == 0.05
    for seed in (0, 1):  # same initial weights: the same value before training
        before = [
            results[f"mlp_bn_l{w}_s{seed}"]["measures_before"]["bn_sharpness"] for w in ("0", "0.5")
        ]
        assert before[0]["value"] == before[1]["value"]
    assert results["mlp_bn_l0.5_s0"]["training"]["bn_sharpness_weight"] == 0.5
    assert "bn_sharpness_weight" not in results["mlp_bn_l0_s0"]["training"]


def test_the_report_renders_the_verdict_figures_and_csv(finished):
    report = write_report(finished)
    text = report.path.read_text()
    studies.assert_sections(
        text, "## Verdict", "## Results per penalty weight", "### Extra cost per step"
    )
    assert "λ = 0.5" in report.summary and "points over plain SGD" in report.summary
    assert [p.name for p in report.figures] == ["test_accuracy.png", "bn_sharpness.png"]
    for path in report.figures:
        assert path.read_bytes().startswith(PNG_MAGIC)
    rows = list(csv.DictReader(report.csv.open()))
    assert len(rows) == 4 and float(rows[1]["bn_sharpness_before"]) > 0
    [pairing] = report.pairings
    assert set(pairing.differences) == {0, 1} and all(r > 0 for r in pairing.cost_ratios.values())


def test_resume_keeps_finished_runs_and_redoes_a_truncated_one(tmp_path, monkeypatch):
    base.run_study(BN_SHARPNESS, tiny(seeds=(0,)), tmp_path, echo=quiet)
    target = tmp_path / "runs" / "mlp_bn_l0.5_s0" / "result.json"
    target.write_text(target.read_text()[:100])
    calls = TrainingSpy(monkeypatch).configs
    outcome = base.run_study(BN_SHARPNESS, tiny(seeds=(0,)), tmp_path, echo=quiet)
    assert outcome.reused == ["mlp_bn_l0_s0"] and outcome.trained == ["mlp_bn_l0.5_s0"]
    assert len(calls) == 1 and calls[0].bn_sharpness_weight == 0.5


def test_the_command_runs_resumes_and_reports(tmp_path, capsys):
    output = str(tmp_path / "bn")
    command = ["study", "bn-sharpness", "--output", output, *studies.TINY_FLAGS, "--epochs", "1"]
    out, report = command_round_trip(capsys, command, ["report", output])
    assert "points over plain SGD" in out
    assert "BN-sharpness training vs plain SGD" in report
    study = json.loads((Path(output) / "study.json").read_text())
    assert study["kind"] == "bn-sharpness"
    assert main(["study", "randomized-labels", "--output", output, "--no-report"]) == 2
    assert "holds a 'bn-sharpness' study" in capsys.readouterr().err


def test_the_paper_and_cpu_presets():
    paper = paper_preset()
    assert paper.dataset == "cifar10" and 0.0 in paper.weights
    assert preset("cpu").models[0].options == {"batchnorm": True}
