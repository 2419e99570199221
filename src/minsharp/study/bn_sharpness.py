"""The BN-sharpness training study (Yi et al. 2019; MATH §5, reconstructed): does it help?

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
3. the network is trained for the same epochs with :func:`~minsharp.train.train_classifier`
   and ``bn_sharpness_weight = λ``, ``bn_sharpness_delta = δ`` (the combined gradient of
   :mod:`minsharp.bn_training`); the wall time of the optimisation steps alone is recorded,
   per step;
4. **after** training: train and test accuracy and the measures again (eval mode, running
   statistics).

The BN-sharpness measure uses the training radius δ unless ``measure_options`` sets another.
Layout, resume and provenance are those of every study (:mod:`minsharp.study.base`); the
report is :mod:`minsharp.study.bn_sharpness_report`.

MATH §5 states no experimental protocol; the ``paper`` preset is our larger setting (CIFAR-10
with the zoo's small CNN with batch-norm; the paper's own networks are not in the zoo), and
its report says so.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minsharp.errors import StudyError
from minsharp.measures.bn_sharpness import DEFAULT_DELTA
from minsharp.models import count_parameters
from minsharp.study import base
from minsharp.study.base import CHECKPOINT_DIR, FORMAT_VERSION, StudyData
from minsharp.study.presets import (
    ModelPlan,
    common_problems,
    config_from_mapping,
    raise_problems,
    ratio_label,
    stored_config,
)
from minsharp.train import TrainingConfig, accuracy, save_checkpoint, train_classifier

#: The kind of study this module runs (``study.json``'s ``kind``).
KIND = "bn-sharpness"

#: Names of the presets, in the order the command line lists them.
PRESETS: tuple[str, ...] = ("demo", "cpu", "paper")

#: What the measures are computed on, in words (recorded in every result).
MEASURED_ON = (
    "the training inputs with their labels, in eval mode: before training on a copy whose "
    "batch-norm running statistics are those of the training set, and after training"
)

#: Keys a complete result holds as finite numbers.
RESULT_NUMBERS = ("train_accuracy", "test_accuracy", "weight", "seed", "seconds_per_step")

#: Keys of a result holding measure entries: after and before training.
MEASURE_GROUPS = ("measures", "measures_before")

#: Training settings the grid decides (not allowed in ``training``).
_GRID_TRAINING = ("bn_sharpness_weight", "bn_sharpness_delta")

#: Examples per forward pass when calibrating the running statistics.
CALIBRATION_BATCH = 512


@dataclass(frozen=True)
class BNSharpnessConfig:
    """Everything that decides the results of a BN-sharpness training study.

    Attributes:
        preset: the preset this configuration started from (a label for the report).
        dataset: a name of :data:`minsharp.data.datasets.DATASETS`.
        train_size: training examples (``None``: all).
        test_size: test examples (``None``: all).
        data_seed: seed of the train/test split and subsets.
        weights: the penalty weights λ compared; 0 (plain SGD, the baseline) and at least
            one positive weight.
        delta: the radius δ of the penalty, relative to each block's norm, in (0, 1].
        seeds: the trials; a seed initialises a network and orders its minibatches (the
            same for every λ).
        models: networks with batch-norm (zoo option ``batchnorm: true``).
        training: training settings shared by all runs (keys of :data:`minsharp.study.
            presets.TRAINING_KEYS` except the penalty's).
        measures: measures taken before and after training (``bn_sharpness`` among them).
        measure_options: options per measure (``bn_sharpness``'s ``delta`` defaults to
            ``delta``).
        measure_examples: measure on the first this-many training examples (``None``: all).
        dtype: ``"float32"`` or ``"float64"``.
    """

    preset: str
    dataset: str
    train_size: int | None
    test_size: int | None
    data_seed: int
    weights: tuple[float, ...]
    delta: float
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...] = ("bn_sharpness",)
    measure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_examples: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate(self)

    @property
    def runs(self) -> int:
        """Number of runs: models × weights × seeds."""
        return len(self.models) * len(self.weights) * len(self.seeds)

    def training_config(self, model: ModelPlan, seed: int, weight: float = 0.0) -> TrainingConfig:
        """The training of one run with penalty weight ``weight``."""
        return TrainingConfig(
            **{**self.training, **model.training},
            seed=seed,
            bn_sharpness_weight=weight,
            bn_sharpness_delta=self.delta,
        )

    def effective_measure_options(self) -> dict[str, dict[str, Any]]:
        """``measure_options`` with ``bn_sharpness``'s ``delta`` defaulting to :attr:`delta`."""
        options = {name: dict(self.measure_options.get(name, {})) for name in self.measures}
        if "bn_sharpness" in options:
            options["bn_sharpness"] = {"delta": self.delta, **options["bn_sharpness"]}
        return options

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON types (what ``study.json`` stores)."""
        return {
            "preset": self.preset,
            "dataset": self.dataset,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "data_seed": self.data_seed,
            "weights": list(self.weights),
            "delta": self.delta,
            "seeds": list(self.seeds),
            "models": [model.to_dict() for model in self.models],
            "training": dict(self.training),
            "measures": list(self.measures),
            "measure_options": {
                name: copy.deepcopy(dict(options)) for name, options in self.measure_options.items()
            },
            "measure_examples": self.measure_examples,
            "dtype": self.dtype,
        }


def validate(config: BNSharpnessConfig) -> None:
    """Check a configuration; raise :class:`StudyError` naming every problem found.

    Besides the checks shared by every study (:func:`~minsharp.study.presets.
    common_problems`): distinct non-negative finite weights including 0 and a positive one;
    δ in (0, 1]; no penalty settings in ``training``; models with batch-norm;
    ``bn_sharpness`` among the measures.
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
    holders = ["training"] * any(key in config.training for key in _GRID_TRAINING) + [
        f"model {model.name!r}"
        for model in config.models
        if any(key in model.training for key in _GRID_TRAINING)
    ]
    if holders:
        problems.append(
            f"{' and '.join(holders)} set the penalty, which the grid's weights and delta "
            "decide; remove bn_sharpness_weight and bn_sharpness_delta there"
        )
    for model in config.models:
        if model.options.get("batchnorm") is not True:
            problems.append(
                f"model {model.name!r} has no batch-norm (BN-sharpness needs it); set its "
                'option "batchnorm": true (zoo models with it: mlp, small_cnn)'
            )
    if "bn_sharpness" not in config.measures:
        problems.append("measures must include bn_sharpness (the report compares it)")
    if not problems:
        problems += common_problems(config)
    raise_problems(problems)


# --------------------------------------------------------------------------- presets


def demo_preset() -> BNSharpnessConfig:
    """``demo``: digits, an MLP 64-64-64-10 with batch-norm, λ ∈ {0, 0.5}, 5 seeds (≈ 10 s)."""
    return BNSharpnessConfig(
        preset="demo",
        dataset="digits",
        train_size=None,
        test_size=None,
        data_seed=0,
        weights=(0.0, 0.5),
        delta=DEFAULT_DELTA,
        seeds=tuple(range(5)),
        models=(ModelPlan("mlp_bn", "mlp", {"hidden": [64, 64], "batchnorm": True}),),
        training=_training(epochs=30),
    )


def cpu_preset() -> BNSharpnessConfig:
    """``cpu``: 4 000/4 000 MNIST images, the small CNN with batch-norm, λ ∈ {0, 0.5}, 10 seeds."""
    return BNSharpnessConfig(
        preset="cpu",
        dataset="mnist",
        train_size=4000,
        test_size=4000,
        data_seed=0,
        weights=(0.0, 0.5),
        delta=DEFAULT_DELTA,
        seeds=tuple(range(10)),
        models=(ModelPlan("cnn_bn", "small_cnn", {"batchnorm": True}),),
        training=_training(epochs=15),
        measure_examples=1000,
    )


def paper_preset() -> BNSharpnessConfig:
    """``paper``: full CIFAR-10, the small CNN with batch-norm, 100 epochs, 5 seeds (a GPU)."""
    return BNSharpnessConfig(
        preset="paper",
        dataset="cifar10",
        train_size=None,
        test_size=None,
        data_seed=0,
        weights=(0.0, 0.5),
        delta=DEFAULT_DELTA,
        seeds=tuple(range(5)),
        models=(ModelPlan("cnn_bn", "small_cnn", {"batchnorm": True}),),
        training=_training(epochs=100, batch_size=128),
        measure_examples=10000,
    )


def _training(**changes: Any) -> dict[str, Any]:
    """SGD with momentum 0.9, weight decay 5e-4, batch 64, lr 0.05 decaying as 1/(1 + 1e-4 t)."""
    return {
        "epochs": 20,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_decay": 1e-4,
        "target_train_accuracy": None,
        **changes,
    }


_BUILDERS = {"demo": demo_preset, "cpu": cpu_preset, "paper": paper_preset}


def preset(name: str) -> BNSharpnessConfig:
    """The preset ``name`` of :data:`PRESETS`.

    Raises:
        StudyError: an unknown name.
    """
    if name not in _BUILDERS:
        raise StudyError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}.")
    return _BUILDERS[name]()


def from_mapping(content: Mapping[str, Any], *, base: BNSharpnessConfig) -> BNSharpnessConfig:
    """``base`` with a config mapping applied (as :func:`.presets.config_from_mapping`)."""
    return config_from_mapping(content, base=base, presets=preset)


def stored(content: Mapping[str, Any]) -> BNSharpnessConfig:
    """The :class:`BNSharpnessConfig` stored in a ``study.json``."""
    return stored_config(content, base=demo_preset())


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunPlan:
    """One run: a model trained with penalty weight λ from one seed.

    Attributes:
        run_id: ``<model>_l<λ>_s<seed>``.
        model: the network's plan.
        weight: λ (0: plain SGD).
        seed: initialisation and minibatch order (shared by the weights of a seed).
        training: the run's training configuration.
    """

    run_id: str
    model: ModelPlan
    weight: float
    seed: int
    training: TrainingConfig


def plan_runs(config: BNSharpnessConfig) -> list[RunPlan]:
    """The runs seed by seed, each model's weights in turn (paired runs finish together)."""
    return [
        RunPlan(
            run_id=f"{model.name}_l{ratio_label(weight)}_s{seed}",
            model=model,
            weight=weight,
            seed=seed,
            training=config.training_config(model, seed, weight),
        )
        for seed in config.seeds
        for model in config.models
        for weight in config.weights
    ]


def run_fingerprint(config: BNSharpnessConfig, plan: RunPlan) -> str:
    """SHA-256 of every setting that decides a run's result."""
    return base.fingerprint(
        {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "data": {
                "dataset": config.dataset,
                "train_size": config.train_size,
                "test_size": config.test_size,
                "data_seed": config.data_seed,
                "dtype": config.dtype,
            },
            "model": plan.model.to_dict(),
            "training": plan.training.as_dict(),
            "measures": config.effective_measure_options(),
            "measure_examples": config.measure_examples,
        }
    )


def calibrated_copy(
    model: nn.Module, inputs: Tensor, batch_size: int = CALIBRATION_BATCH
) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are those of ``inputs``.

    Every batch-norm's statistics are reset and re-estimated in one pass over ``inputs``
    in training mode with cumulative averaging (``momentum=None``), without gradients; the
    copy is returned in eval mode with the original momenta. ``model`` is untouched.
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


def execute_run(
    config: BNSharpnessConfig,
    plan: RunPlan,
    data: StudyData,
    run_dir: Path,
    record: dict[str, Any],
    progress: bool = False,
) -> None:
    """Measure at initialisation, train with penalty weight λ, measure again; fill ``record``."""
    started = time.perf_counter()
    record.update(
        model=plan.model.name,
        zoo=plan.model.zoo,
        model_options=dict(plan.model.options),
        weight=plan.weight,
        delta=config.delta,
        seed=plan.seed,
        training=plan.training.as_dict(),
        device=str(data.device),
        dtype=config.dtype,
        threads=torch.get_num_threads(),
    )
    model = base.build_network(plan.model, plan.seed, data)
    record["parameters"] = count_parameters(model)
    count = min(config.measure_examples or len(data.train_labels), len(data.train_labels))
    inputs = (data.train_inputs[:count], data.train_labels[:count])
    record["measured_on"] = {"description": MEASURED_ON, "examples": count}
    options = config.effective_measure_options()
    record["measures_before"], before_seconds = base.measure_all(
        calibrated_copy(model, data.train_inputs), inputs, config.measures, options
    )
    began = time.perf_counter()
    history = train_classifier(
        model,
        data.train_inputs,
        data.train_labels,
        plan.training,
        test=(data.test_inputs, data.test_labels),
        progress=progress,
        description=plan.run_id,
    )
    training_seconds = time.perf_counter() - began
    model.eval()
    train_accuracy = accuracy(model, data.train_inputs, data.train_labels)
    test_accuracy = accuracy(model, data.test_inputs, data.test_labels)
    steps = sum(history.steps)
    record.update(
        history=history.as_dict(),
        epochs_run=history.epochs_run,
        steps=steps,
        step_seconds=sum(history.step_seconds),
        seconds_per_step=sum(history.step_seconds) / steps if steps else math.nan,
        final_loss=history.loss[-1] if history.loss else math.nan,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        gap=train_accuracy - test_accuracy,
    )
    record["measures"], after_seconds = base.measure_all(model, inputs, config.measures, options)
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        model_spec=base.model_spec(plan.model, data),
        record={
            "run_id": plan.run_id,
            "weight": plan.weight,
            "seed": plan.seed,
            "training": plan.training.as_dict(),
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
        },
    )
    record.update(
        checkpoint=CHECKPOINT_DIR,
        timings={
            "training": training_seconds,
            "measures": before_seconds + after_seconds,
            "total": time.perf_counter() - started,
        },
    )


def summarise_run(result: Mapping[str, Any]) -> str:
    """One line about a run: accuracies, BN-sharpness before and after, cost per step."""
    if result.get("status") != "complete":
        return f"{result['run_id']}: FAILED ({result.get('error')}: {result.get('message')})"
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


def _grid_text(config: BNSharpnessConfig) -> str:
    return base.count_text(
        (
            (len(config.models), "model", "models"),
            (len(config.weights), "penalty weight", "penalty weights"),
            (len(config.seeds), "seed", "seeds"),
        )
    )


#: The BN-sharpness training study as a :class:`~minsharp.study.base.StudyKind`.
BN_SHARPNESS = base.StudyKind(
    name=KIND,
    plan_runs=plan_runs,
    fingerprint=run_fingerprint,
    execute=execute_run,
    stored_config=stored,
    grid_text=_grid_text,
    summarise=summarise_run,
    measured_on=MEASURED_ON,
    result_numbers=RESULT_NUMBERS,
    measure_groups=MEASURE_GROUPS,
)
