"""The BN-sharpness training study (Yi et al. 2019; theory §5, reconstructed): does it help?

Yi, Zhang, Chen, Ma & Liu (IJCAI 2019) train networks with batch-norm on ``L + λ·S_BN`` and
report better test accuracy than plain SGD. This study compares the two on a CPU-sized task:
for every run of the grid models × penalty weights λ × seeds (λ = 0 is plain SGD),

1. the network (a zoo model with batch-norm) is built under ``torch.manual_seed(seed)``, so
   the runs of one seed start from the same weights and see the same minibatch order
   whatever λ (paired comparisons);
2. **before** training, every measure (BN-sharpness by default) is taken on a copy whose
   batch-norm running statistics are set to the training set's (one pass in training mode
   with cumulative averaging, :func:`calibrated_copy`), so that eval mode normalises as
   training does;
3. the network is trained for the same epochs with :func:`~minsharp.training.train_classifier`
   and ``bn_sharpness_weight = λ``, ``bn_sharpness_delta = δ`` (the combined gradient of
   :mod:`minsharp.training.bn_penalty`); the wall time of the optimisation steps alone is recorded,
   per step;
4. **after** training: train and test accuracy and the measures again (eval mode, running
   statistics).

The BN-sharpness measure uses the training radius δ unless ``measure_options`` sets another.
Layout, resume and provenance are those of every study (:mod:`minsharp.study.core`); the
report is :mod:`minsharp.study.bn_training.report`.

theory §5 states no experimental protocol; the ``paper`` preset is our larger setting (CIFAR-10
with the zoo's small CNN with batch-norm; the paper's own networks are not in the zoo), and
its report says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from minsharp.measures.bn_sharpness import DEFAULT_DELTA
from minsharp.models import is_factory_spec
from minsharp.study.core import steps
from minsharp.study.core.config import (
    GridConfig,
    ModelPlan,
    Presets,
    grid_setting_holders,
    raise_kind_problems,
    ratio_label,
    sgd_training,
)
from minsharp.study.core.kind import Flag, RunContext, StudyKind
from minsharp.study.core.kind import RunPlan as GridRunPlan
from minsharp.training import TrainingConfig

#: What a run's checkpoint records besides the weights: these entries of its result.
CHECKPOINT_KEYS = ("run_id", "weight", "seed", "training", "train_accuracy", "test_accuracy")

#: Training settings the grid decides (not allowed in ``training``).
GRID_TRAINING = ("bn_sharpness_weight", "bn_sharpness_delta")

#: Examples per forward pass when calibrating the running statistics.
CALIBRATION_BATCH = 512


@dataclass(frozen=True, kw_only=True)
class BNSharpnessConfig(GridConfig):
    """Everything that decides the results of a BN-sharpness training study.

    The fields of every kind are :class:`~minsharp.study.core.config.GridConfig`'s (a seed gives
    the same initial weights and minibatch order to every λ; the models have batch-norm, zoo
    option ``batchnorm: true``; ``training`` holds no penalty setting; the measures,
    ``bn_sharpness`` among them and by default, are taken before and after training, with
    ``bn_sharpness``'s ``delta`` defaulting to :attr:`delta`); this kind's own:

    Attributes:
        weights: the penalty weights λ compared; 0 (plain SGD, the baseline) and at least
            one positive weight (default 0 and 0.5).
        delta: the radius δ of the penalty, relative to each block's norm, in (0, 1]
            (default :data:`~minsharp.measures.bn_sharpness.DEFAULT_DELTA`).
    """

    AXES = (
        ("models", "model", "models"),
        ("weights", "penalty weight", "penalty weights"),
        ("seeds", "seed", "seeds"),
    )

    weights: tuple[float, ...] = (0.0, 0.5)
    delta: float = DEFAULT_DELTA
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...] = ("bn_sharpness",)
    measure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_examples: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate(self)

    def training_config(self, model: ModelPlan, seed: int, weight: float = 0.0) -> TrainingConfig:
        """The training of one run with penalty weight ``weight``."""
        return TrainingConfig(
            **{**self.training, **model.training},
            seed=seed,
            bn_sharpness_weight=weight,
            bn_sharpness_delta=self.delta,
        )

    def measure_settings(self) -> dict[str, dict[str, Any]]:
        """Each measure with its options; ``bn_sharpness``'s ``delta`` defaults to :attr:`delta`."""
        options = super().measure_settings()
        if "bn_sharpness" in options:
            options["bn_sharpness"] = {"delta": self.delta, **options["bn_sharpness"]}
        return options


def validate(config: BNSharpnessConfig) -> None:
    """Check a configuration; raise :class:`StudyError` naming the problems found.

    First: distinct non-negative finite weights including 0 and a positive one; δ in
    (0, 1]; no penalty settings in ``training``; models with batch-norm; ``bn_sharpness``
    among the measures. When these hold, the checks shared by every study
    (:func:`~minsharp.study.core.config.common_problems`).
    """
    problems: list[str] = []
    weights = config.weights
    if not all(isinstance(w, float) and math.isfinite(w) and w >= 0 for w in weights) or len(
        {ratio_label(w) for w in weights}
    ) != len(weights):
        problems.append(
            f"weights must be distinct non-negative numbers (to four decimals); got {list(weights)}"
        )
    elif 0.0 not in weights or max(weights, default=0.0) <= 0:
        problems.append(
            f"weights must hold 0 (plain SGD, the baseline) and a positive λ; got {list(weights)}"
        )
    delta = config.delta
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta <= 1:
        problems.append(f"delta must be a number in (0, 1]; got {delta!r}")
    holders = grid_setting_holders(config, GRID_TRAINING)
    if holders:
        problems.append(
            f"{' and '.join(holders)} set the penalty, which the grid's weights and delta "
            "decide; remove bn_sharpness_weight and bn_sharpness_delta there"
        )
    problems += [
        f"model {model.name!r} has no batch-norm (BN-sharpness needs it); set its option "
        '"batchnorm": true (zoo models with it: mlp, small_cnn)'
        for model in config.models
        if model.options.get("batchnorm") is not True and not is_factory_spec(model.zoo)
    ]  # a factory's batch-norm shows once it is built: the penalty refuses a net without one
    if "bn_sharpness" not in config.measures:
        problems.append("measures must include bn_sharpness (the report compares it)")
    raise_kind_problems(config, problems)


# --------------------------------------------------------------------------- presets


#: The presets' training besides :func:`~minsharp.study.core.config.sgd_training`'s SGD:
#: batch 64, weight decay 5e-4, lr decaying as 1/(1 + 1e-4 t), all epochs.
TRAINING: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 64,
    "weight_decay": 5e-4,
    "lr_decay": 1e-4,
    "target_train_accuracy": None,
}


def demo_preset() -> BNSharpnessConfig:
    """``demo``: digits, an MLP 64-64-64-10 with batch-norm, λ ∈ {0, 0.5}, 5 seeds (≈ 10 s)."""
    return BNSharpnessConfig(
        preset="demo",
        dataset="digits",
        seeds=tuple(range(5)),
        models=(ModelPlan("mlp_bn", "mlp", {"hidden": [64, 64], "batchnorm": True}),),
        training=sgd_training(TRAINING, epochs=30),
    )


def cpu_preset() -> BNSharpnessConfig:
    """``cpu``: the ``paper`` preset's CNN on 4 000/4 000 MNIST images, 15 epochs, 10 seeds."""
    return dataclasses.replace(
        paper_preset(),
        preset="cpu",
        dataset="mnist",
        train_size=4000,
        test_size=4000,
        seeds=tuple(range(10)),
        training=sgd_training(TRAINING, epochs=15),
        measure_examples=1000,
    )


def paper_preset() -> BNSharpnessConfig:
    """``paper``: full CIFAR-10, the small CNN with batch-norm, 100 epochs, 5 seeds (a GPU)."""
    return BNSharpnessConfig(
        preset="paper",
        dataset="cifar10",
        seeds=tuple(range(5)),
        models=(ModelPlan("cnn_bn", "small_cnn", {"batchnorm": True}),),
        training=sgd_training(TRAINING, epochs=100, batch_size=128),
        measure_examples=10000,
    )


#: The presets by name (``preset("cpu")`` builds one; ``preset.names`` lists them).
preset = Presets(demo=demo_preset, cpu=cpu_preset, paper=paper_preset)


# --------------------------------------------------------------------------- runs


#: ``minsharp study bn-sharpness --help``: what the study does and its presets.
DESCRIPTION = """\
BN-sharpness training (Yi et al. 2019, theory §5, reconstructed): train networks with batch-norm
with plain SGD (lambda = 0) and with the penalty L + lambda * S_BN, from the same initial
weights and minibatch order for the same epochs; each penalised step follows
(1 - lambda) grad L(w) + lambda grad L(w + t v), t ~ U(0, delta), v the BN-sharpness direction
held fixed. The report gives test accuracy with its spread over seeds, the paired difference
and whether the paper's claim held, BN-sharpness before and after training, and the measured
cost per step.

presets:
  demo   digits (bundled), an MLP 64-64-64-10 with batch-norm, lambda 0 vs 0.5, 5 seeds (~10 s)
  cpu    4000/4000 MNIST images, the small CNN with batch-norm, 15 epochs, lambda 0 vs 0.5,
         10 seeds (about 8 min on 2 cores, 14 min on one)
  paper  full CIFAR-10, the small CNN with batch-norm, 100 epochs, 5 seeds (a GPU machine)
"""


@dataclass(frozen=True)
class RunPlan(GridRunPlan):
    """One run: a model trained with penalty weight λ from one seed (shared by its weights).

    Attributes:
        weight: λ (0: plain SGD).
    """

    weight: float

    @property
    def run_id(self) -> str:
        """``<model>_l<λ>_s<seed>``, the name of its directory."""
        return f"{self.model.name}_l{ratio_label(self.weight)}_s{self.seed}"


def calibrated_copy(
    model: nn.Module, inputs: Tensor, batch_size: int = CALIBRATION_BATCH
) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are estimated on ``inputs``.

    Every batch-norm's statistics are reset and re-estimated in one pass over ``inputs``, in
    chunks of ``batch_size``, in training mode with cumulative averaging (``momentum=None``)
    and without gradients: the running mean and variance are the plain averages of the
    chunks' batch statistics (those of ``inputs`` exactly when one chunk holds them all; a
    last chunk of a single example is left out, as batch-norm cannot train on it). The copy
    is returned in eval mode with the original momenta; ``model`` is untouched.
    """
    twin = copy.deepcopy(model)
    norms = [m for m in twin.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    twin.train()
    with torch.no_grad():
        for begin in range(0, len(inputs), batch_size):
            chunk = inputs[begin : begin + batch_size]
            if len(chunk) > 1:
                twin(chunk)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return twin.eval()


class BNSharpness(StudyKind[BNSharpnessConfig, RunPlan]):
    """The BN-sharpness training study as a :class:`~minsharp.study.core.kind.StudyKind`."""

    name = "bn-sharpness"
    run_plan = RunPlan
    presets = preset
    measured_on = (
        "the training inputs with their labels, in eval mode: before training on a copy whose "
        "batch-norm running statistics are those of the training set, and after training"
    )
    result_numbers = ("train_accuracy", "test_accuracy", "weight", "seed", "seconds_per_step")
    #: The measures after training, and before.
    measure_groups = ("measures", "measures_before")
    axis = "weights"
    grid_training = GRID_TRAINING
    flags = (
        Flag(
            "--weights",
            "weights",
            "penalty weights λ, e.g. 0,0.5 (0: SGD)",
            "L,L,…",
            comma_list=float,
        ),
        Flag("--delta", "delta", "penalty radius δ in (0, 1]", "D", float),
    )
    help = "BN-sharpness training vs plain SGD"
    description = DESCRIPTION
    paper_note = "trains 10 networks for 100 epochs each on full CIFAR-10"

    def fingerprint(self, config: BNSharpnessConfig, plan: RunPlan) -> str:
        """SHA-256 of every setting that decides a run's result (the penalty is in its training)."""
        return steps.run_fingerprint(self.name, config, plan)

    def execute(self, config: BNSharpnessConfig, plan: RunPlan, run: RunContext) -> None:
        """Measure at initialisation, train with penalty λ, measure again; fill the record."""
        started = time.perf_counter()
        data, record = run.data, run.record
        record.update(
            steps.run_settings(plan, data, config.dtype, weight=plan.weight, delta=config.delta)
        )
        model = steps.build_network(plan, run)
        inputs = steps.measured_examples(
            data.train_inputs, data.train_labels, config.measure_examples, record, self.measured_on
        )
        options = config.measure_settings()
        record["measures_before"], before_seconds = steps.measure_all(
            calibrated_copy(model, data.train_inputs), inputs, config.measures, options
        )
        began = time.perf_counter()
        history = steps.train(model, plan, run, data.train_labels, test=True)
        training_seconds = time.perf_counter() - began
        scores = steps.evaluate(model, data, data.train_labels)
        count, step_seconds = sum(history.steps), sum(history.step_seconds)
        during = {
            "steps": count,
            "step_seconds": step_seconds,
            "seconds_per_step": step_seconds / count if count else math.nan,
        }
        record.update(steps.training_outcome(history, scores, during=during))
        record["measures"], after_seconds = steps.measure_all(
            model, inputs, config.measures, options
        )
        steps.save_network(model, plan, run, CHECKPOINT_KEYS)
        record["timings"] = {
            "training": training_seconds,
            "measures": before_seconds + after_seconds,
            "total": time.perf_counter() - started,
        }

    def summarise(self, result: Mapping[str, Any]) -> str:
        """One line about a complete run: accuracies, BN-sharpness before and after, step cost."""
        before = (result["measures_before"].get("bn_sharpness") or {}).get("value")
        after = (result["measures"].get("bn_sharpness") or {}).get("value")
        sharpness = (
            f"; BN-sharpness {before:.4g} → {after:.4g}"
            if isinstance(before, float) and isinstance(after, float)
            else ""
        )
        return (
            f"{result['run_id']}: train {result['train_accuracy']:.4f}, test "
            f"{result['test_accuracy']:.4f}{sharpness}; "
            f"{1000 * result['seconds_per_step']:.1f} ms per step, "
            f"{result['timings']['total']:.1f} s in all"
        )


#: The BN-sharpness training study.
BN_SHARPNESS = BNSharpness()
