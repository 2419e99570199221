"""Configurations of the randomized-label study, and its three presets.

A :class:`StudyConfig` fixes everything that decides a study's results: the data set and its
split, the label-corruption rule, the grid (label-noise ratios × seeds × models), each
model's training and the measures with their options. It is written to ``DIR/study.json``
and compared there on every resume. How the study is run (device, threads, progress bars,
where the data files are) is not part of it.

The presets (:data:`PRESETS`):

``demo``
    scikit-learn's bundled digits (offline), ratios 0, 0.25, 0.5, 0.75, 1 × 3 seeds, a ReLU
    MLP 64-128-128-10 trained for 250 epochs (every network reaches 100 % training accuracy,
    also on fully random labels); Minimum Sharpness, normalized sharpness and two
    non-invariant baselines (Hessian trace, ε-sharpness). About a minute on 2 cores.
``cpu``
    MNIST, 4 000 training and 2 000 test images (from the test files alone where only those
    are on disk), the paper's MLP 784-512-128-512-10, ratios 0, 0.1, …, 1 × 2 seeds, 300
    epochs of batch 256 at learning rate 0.05, and eight measures. Under half an hour on 2
    cores; every network ends at or near 100 % training accuracy.
``cpu-lenet``
    The paper's LeNet (theory §6) in place of the MLP: 1 000 training and 1 000 test MNIST
    images, ratios 0, 0.1, …, 1 × 2 seeds, 25 epochs of batch 128 at learning rate 0.05,
    the measures of ``cpu`` on the first 500 training examples. About 45 minutes on 2
    cores; on the noisiest labels LeNet does not reach 100 % training accuracy in so few
    epochs (the report flags those runs).
``paper``
    The protocol of the Minimum Sharpness paper (theory §6) exactly: full MNIST, ratios 0, 0.1,
    …, 1, 10 trials, the MLP (lr 0.1, 3 000 epochs) and LeNet (lr 0.01, 1 000 epochs), batch
    1 024, momentum 0.9, weight decay 1e−5, lr decay 1e−4 per step. For a GPU machine.

A JSON config file holds the keys of :meth:`StudyConfig.to_dict`, any subset of them, and
optionally ``"preset"``, the preset it modifies
(:func:`~minsharp.study.core.config.config_from_mapping`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from minsharp.data.corruption import RULES
from minsharp.study.core.config import (
    GridConfig,
    ModelPlan,
    Presets,
    common_problems,
    raise_problems,
    ratio_label,
)
from minsharp.training import TrainingConfig

#: The stress tests a study may add to every run (``--stress``).
STRESS_TESTS: tuple[str, ...] = ("rescale",)


@dataclass(frozen=True, kw_only=True)
class StudyConfig(GridConfig):
    """Everything that decides the results of a randomized-label study.

    The fields of every kind are :class:`GridConfig`'s; this kind's own:

    Attributes:
        corruption: the label-corruption rule, ``"permute"`` (the paper's, the default) or
            ``"uniform"``.
        ratios: the label-noise ratios r ∈ [0, 1]; the runs of one trial (seed) at one ratio
            share their corrupted labels, whatever the model.
        stress: ``"rescale"`` also measures function-equivalent rescaled twins of every
            network (:mod:`minsharp.study.randomized_labels.stress`); ``None`` (the default)
            does not.
    """

    AXES = (
        ("ratios", "ratio", "ratios"),
        ("seeds", "seed", "seeds"),
        ("models", "model", "models"),
    )

    corruption: str = "permute"
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...]
    measure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_examples: int | None = None
    dtype: str = "float32"
    stress: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    def training_config(self, model: ModelPlan, seed: int) -> TrainingConfig:
        """The :class:`~minsharp.training.TrainingConfig` of one run of ``model``."""
        return TrainingConfig(**{**self.training, **model.training}, seed=seed)


def validate(config: StudyConfig) -> None:
    """Check a configuration; raise :class:`StudyError` naming every problem found.

    Checked: :func:`common_problems` (data set, sizes, seeds, models, training, measures,
    dtype); the corruption rule; ratios in [0, 1], distinct to four decimals; the stress test.
    """
    problems = common_problems(config)
    if config.corruption not in RULES:
        problems.append(f"corruption must be one of {', '.join(RULES)}; got {config.corruption!r}")
    if not config.ratios:
        problems.append("ratios is empty; give at least one label-noise ratio")
    for ratio in config.ratios:
        if not (isinstance(ratio, float) and math.isfinite(ratio) and 0 <= ratio <= 1):
            problems.append(f"ratios must be numbers in [0, 1]; got {ratio!r}")
    labels = [ratio_label(ratio) for ratio in config.ratios if isinstance(ratio, float)]
    if len(set(labels)) != len(labels):
        problems.append(f"ratios must be distinct to four decimals; got {list(config.ratios)}")
    if config.stress not in (None, *STRESS_TESTS):
        problems.append(
            f"stress must be null or one of {', '.join(STRESS_TESTS)}; got {config.stress!r}"
        )
    raise_problems(problems)


#: Measures of the ``cpu``, ``cpu-lenet`` and ``paper`` presets: the two scale-invariant
#: measures the paper compares, our neuron-wise Minimum Sharpness, the other invariant ones
#: that are cheap on an MLP, and the plain baselines.
STUDY_MEASURES: tuple[str, ...] = (
    "minimum_sharpness",
    "neuron_minimum_sharpness",
    "normalized_sharpness",
    "normalized_sharpness_icml",
    "hessian_trace",
    "top_eigenvalue",
    "fisher_rao",
    "epsilon_sharpness",
    "adaptive_sharpness_average",
)


#: Options of :data:`STUDY_MEASURES`: Lanczos to a relative residual of 1e-4, plenty to rank
#: networks; the default 1e-6 is at the edge of float32 and may take all 100 iterations.
STUDY_MEASURE_OPTIONS: dict[str, dict[str, Any]] = {"top_eigenvalue": {"tolerance": 1e-4}}


#: The training of the paper's randomized-label experiment (theory §6), shared by its models.
PAPER_TRAINING: dict[str, Any] = {
    "batch_size": 1024,
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "lr_decay": 1e-4,
    "target_train_accuracy": None,
}


def _small_training(*, epochs: int, batch_size: int) -> dict[str, Any]:
    """The demo and cpu training: lr 0.05 with the paper's momentum, weight decay, lr decay."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-5,
        "lr_decay": 1e-4,
        "target_train_accuracy": None,
    }


def _ratios(step: float, stop: float = 1.0) -> tuple[float, ...]:
    count = round(stop / step)
    return tuple(round(index * step, 10) for index in range(count + 1))


def demo_preset() -> StudyConfig:
    """The ``demo`` preset: digits, 5 ratios × 3 seeds, an MLP 64-128-128-10, 4 measures."""
    return StudyConfig(
        preset="demo",
        dataset="digits",
        ratios=(0.0, 0.25, 0.5, 0.75, 1.0),
        seeds=(0, 1, 2),
        models=(ModelPlan("mlp", "mlp", {"hidden": [128, 128]}),),
        training=_small_training(epochs=250, batch_size=64),
        measures=(
            "minimum_sharpness",
            "neuron_minimum_sharpness",
            "normalized_sharpness",
            "hessian_trace",
            "epsilon_sharpness",
        ),
    )


def cpu_preset() -> StudyConfig:
    """The ``cpu`` preset: 4 000 MNIST images, the paper's MLP, 11 ratios × 2 seeds."""
    return StudyConfig(
        preset="cpu",
        dataset="mnist",
        train_size=4000,
        test_size=2000,
        ratios=_ratios(0.1),
        seeds=(0, 1),
        models=(ModelPlan("mlp", "paper_mlp"),),
        training=_small_training(epochs=300, batch_size=256),
        measures=STUDY_MEASURES,
        measure_options=copy.deepcopy(STUDY_MEASURE_OPTIONS),
    )


#: Measures of the ``cpu-lenet`` preset: those of ``cpu``, the neuron-wise Minimum Sharpness
#: last (the order of the committed run, docs/randomized-labels-lenet).
LENET_MEASURES: tuple[str, ...] = (
    *(name for name in STUDY_MEASURES if name != "neuron_minimum_sharpness"),
    "neuron_minimum_sharpness",
)


def cpu_lenet_preset() -> StudyConfig:
    """The ``cpu-lenet`` preset: the paper's LeNet on 500 MNIST images, 5 ratios × 2 seeds.

    Sized for about 45 minutes on 2 cores: LeNet costs about 8× the MLP per image, so few
    images (500 to train on and measure, 2 000 to test) and 150 epochs of batch 50. At this
    scale LeNet does not fully memorise shuffled labels; the report gives the training
    accuracies.
    """
    return replace(
        cpu_preset(),
        preset="cpu-lenet",
        train_size=500,
        ratios=_ratios(0.25),
        models=(ModelPlan("lenet", "lenet"),),
        training=_small_training(epochs=150, batch_size=50),
        measures=LENET_MEASURES,
    )


def paper_preset() -> StudyConfig:
    """The ``paper`` preset: theory §6 exactly (full MNIST, 11 ratios × 10 trials, MLP, LeNet)."""
    return StudyConfig(
        preset="paper",
        dataset="mnist",
        ratios=_ratios(0.1),
        seeds=tuple(range(10)),
        models=(
            ModelPlan("mlp", "paper_mlp", training={"lr": 0.1, "epochs": 3000}),
            ModelPlan("lenet", "lenet", training={"lr": 0.01, "epochs": 1000}),
        ),
        training=dict(PAPER_TRAINING),
        measures=STUDY_MEASURES,
        measure_options=copy.deepcopy(STUDY_MEASURE_OPTIONS),
    )


#: The presets by name: ``preset("cpu")`` builds one (see the module's docstring).
preset = Presets(
    demo=demo_preset, cpu=cpu_preset, **{"cpu-lenet": cpu_lenet_preset}, paper=paper_preset
)


#: Names of the presets, in the order the command line lists them.
PRESETS = preset.names
