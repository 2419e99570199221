"""The large- vs small-batch study (Rangamani et al. 2019; MATH §4): are large-batch minima sharper?

Rangamani, Nguyen, Kumar, Phan, Chin & Tran (2019, "A scale invariant flatness measure for
deep network minima") train the same networks with small-batch (SB) and large-batch (LB)
SGD and find the LB minima sharper under their rescaling-invariant measure
``λ_max(D H D)``, ``D = blockdiag(‖P‖_F I)`` (``quotient_flatness``). MATH §4 gives their
networks: on MNIST an MLP with five hidden layers of 512 units and LeNet, both **without
biases** (so the layer rescaling acts on weights alone).

For every run of the grid models × batch sizes × seeds:

1. the zoo network is built under ``torch.manual_seed(seed)``, so the networks of one seed
   and model start from the same weights whatever the batch size (matched pairs), and are
   trained with :func:`~minsharp.train.train_classifier` (SGD with momentum; minibatch order
   seeded by the seed) until the target training accuracy or the epoch budget;
2. train and test accuracy and the gap ``train − test`` are recorded;
3. each measure is computed on the (first ``measure_examples``) training examples;
4. a **rescaled copy** is made: ``W_l → α_l W_l`` with random ``α`` (log-uniform in
   ``[1/s, s]``, ``s = rescale_spread``, then divided by their geometric mean so that
   ``Π α_l = 1``; MATH §2), through :func:`minsharp.symmetry.rescale`, which verifies that
   the copy computes the same logits; every measure is computed on it too. An invariant
   measure gives the same value; the plain Hessian trace and top eigenvalue move.

Layout, resume and provenance are those of every study (:mod:`minsharp.study.base`). The
report (:mod:`minsharp.study.batch_size_report`) compares the smallest batch size with the
largest per model and measure, paired by seed.

What MATH §4 does not state, the ``paper`` preset assumes (the report says so): Keskar et
al.'s (2017) batch sizes, 256 for SB and 10 % of the training set (6 000) for LB; SGD with
momentum 0.9 and no weight decay, lr 0.05 for the MLP and 0.01 for LeNet (the Minimum
Sharpness paper's LeNet rate), constant; training until 99.9 % training accuracy (at most
500 epochs) so that both batch sizes reach comparable minima; five seeds; the measures on all
training examples.
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

from minsharp.errors import NotAChainError, StudyError
from minsharp.models import count_parameters
from minsharp.study import base
from minsharp.study.base import CHECKPOINT_DIR, FORMAT_VERSION, StudyData
from minsharp.study.presets import (
    ModelPlan,
    common_problems,
    config_from_mapping,
    raise_problems,
    stored_config,
)
from minsharp.symmetry import chain_layers, rescaled_copy, verify_same_function
from minsharp.train import TrainingConfig, accuracy, save_checkpoint, train_classifier

#: The kind of study this module runs (``study.json``'s ``kind``).
KIND = "batch-size"

#: Names of the presets, in the order the command line lists them.
PRESETS: tuple[str, ...] = ("demo", "cpu", "paper")

#: What the measures are computed on, in words (recorded in every result).
MEASURED_ON = "the training inputs with their labels, after the last epoch"

#: The measures of the presets: the three scale-invariant ones and the two plain baselines.
MEASURES: tuple[str, ...] = (
    "quotient_flatness",
    "minimum_sharpness",
    "normalized_sharpness",
    "hessian_trace",
    "top_eigenvalue",
)

#: Keys a complete result holds as finite numbers.
RESULT_NUMBERS = ("train_accuracy", "test_accuracy", "gap", "batch_size", "seed")

#: Keys of a result holding measure entries: the trained network and its rescaled copy.
MEASURE_GROUPS = ("measures", "rescaled_measures")


@dataclass(frozen=True)
class BatchSizeConfig:
    """Everything that decides the results of a batch-size study.

    Attributes:
        preset: the preset this configuration started from (a label for the report).
        dataset: a name of :data:`minsharp.data.datasets.DATASETS`.
        train_size: training examples (``None``: all).
        test_size: test examples (``None``: all).
        data_seed: seed of the train/test split and subsets.
        batch_sizes: the batch sizes compared (at least two; the smallest is "small batch",
            the largest "large batch").
        seeds: the trials; a seed initialises a network (the same for every batch size)
            and orders its minibatches.
        models: the networks.
        training: training settings shared by all runs (keys of
            :data:`minsharp.study.presets.TRAINING_KEYS` except ``batch_size``).
        measures: registered measures computed on every trained network and its copy.
        measure_options: options per measure.
        measure_examples: measure on the first this-many training examples (``None``: all).
        rescale_spread: ``s > 1``: each ``α_l`` is drawn log-uniformly in ``[1/s, s]``
            before the product is normalised to 1.
        dtype: ``"float32"`` or ``"float64"``.
    """

    preset: str
    dataset: str
    train_size: int | None
    test_size: int | None
    data_seed: int
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...]
    measure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_examples: int | None = None
    rescale_spread: float = 10.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate(self)

    @property
    def runs(self) -> int:
        """Number of runs: models × batch sizes × seeds."""
        return len(self.models) * len(self.batch_sizes) * len(self.seeds)

    def training_config(
        self, model: ModelPlan, seed: int, batch_size: int | None = None
    ) -> TrainingConfig:
        """The training of one run (``batch_size`` default: the smallest of the grid)."""
        size = min(self.batch_sizes) if batch_size is None else batch_size
        return TrainingConfig(**{**self.training, **model.training}, batch_size=size, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON types (what ``study.json`` stores)."""
        return {
            "preset": self.preset,
            "dataset": self.dataset,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "data_seed": self.data_seed,
            "batch_sizes": list(self.batch_sizes),
            "seeds": list(self.seeds),
            "models": [model.to_dict() for model in self.models],
            "training": dict(self.training),
            "measures": list(self.measures),
            "measure_options": {
                name: copy.deepcopy(dict(options)) for name, options in self.measure_options.items()
            },
            "measure_examples": self.measure_examples,
            "rescale_spread": self.rescale_spread,
            "dtype": self.dtype,
        }


def validate(config: BatchSizeConfig) -> None:
    """Check a configuration; raise :class:`StudyError` naming every problem found.

    Besides the checks shared by every study (:func:`~minsharp.study.presets.
    common_problems`): at least two distinct positive batch sizes, no ``batch_size`` in the
    training settings (the grid sets it), and ``rescale_spread > 1``.
    """
    problems: list[str] = []
    sizes = config.batch_sizes
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        problems.append(f"batch_sizes must be at least two integers; got {list(sizes)}")
    elif min(sizes) < 1 or len(set(sizes)) != len(sizes):
        problems.append(f"batch_sizes must be distinct positive integers; got {list(sizes)}")
    holders = ["training"] * ("batch_size" in config.training) + [
        f"model {model.name!r}" for model in config.models if "batch_size" in model.training
    ]
    if holders:
        problems.append(
            f"{' and '.join(holders)} set batch_size, which the grid's batch_sizes decide; "
            "remove it"
        )
    spread = config.rescale_spread
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 1:
        problems.append(f"rescale_spread must be a number above 1; got {spread!r}")
    if not problems:
        problems += common_problems(config)
    raise_problems(problems)


# --------------------------------------------------------------------------- presets


def _training(**changes: Any) -> dict[str, Any]:
    """SGD with momentum 0.9, no weight decay, constant rate (MATH §4 states none of these)."""
    return {
        "epochs": 500,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lr_decay": 0.0,
        "target_train_accuracy": 0.999,
        **changes,
    }


def demo_preset() -> BatchSizeConfig:
    """``demo``: digits, a bias-free MLP 64-64-64-10, batches 16 vs 512, 3 seeds (≈ 20 s)."""
    return BatchSizeConfig(
        preset="demo",
        dataset="digits",
        train_size=None,
        test_size=None,
        data_seed=0,
        batch_sizes=(16, 512),
        seeds=(0, 1, 2),
        models=(ModelPlan("mlp", "mlp", {"hidden": [64, 64], "bias": False}),),
        training=_training(epochs=400, lr=0.05, target_train_accuracy=1.0),
        measures=MEASURES,
        measure_options={
            "quotient_flatness": {"tolerance": 1e-4},
            "top_eigenvalue": {"tolerance": 1e-4},
        },
    )


def cpu_preset() -> BatchSizeConfig:
    """``cpu``: 2 000 MNIST images, the bias-free MLP 5×512 and LeNet, 64 vs 500, 5 seeds."""
    return BatchSizeConfig(
        preset="cpu",
        dataset="mnist",
        train_size=2000,
        test_size=2000,
        data_seed=0,
        batch_sizes=(64, 500),
        seeds=tuple(range(5)),
        models=_paper_models(),
        training=_training(epochs=300, target_train_accuracy=0.995),
        measures=MEASURES,
        measure_options={
            "quotient_flatness": {"tolerance": 1e-3},
            "top_eigenvalue": {"tolerance": 1e-3},
        },
        measure_examples=500,
    )


def paper_preset() -> BatchSizeConfig:
    """``paper``: full MNIST, MLP 5×512 and LeNet without biases, SB 256 vs LB 6 000, 5 seeds."""
    return BatchSizeConfig(
        preset="paper",
        dataset="mnist",
        train_size=None,
        test_size=None,
        data_seed=0,
        batch_sizes=(256, 6000),
        seeds=tuple(range(5)),
        models=_paper_models(),
        training=_training(),
        measures=MEASURES,
        measure_options={
            "quotient_flatness": {"tolerance": 1e-4},
            "top_eigenvalue": {"tolerance": 1e-4},
        },
    )


def _paper_models() -> tuple[ModelPlan, ...]:
    """MATH §4's MNIST networks without biases: MLP 784-512×5-10 and LeNet (lr 0.01)."""
    return (
        ModelPlan("mlp", "mlp", {"hidden": [512] * 5, "bias": False}),
        ModelPlan("lenet", "lenet", {"bias": False}, training={"lr": 0.01}),
    )


_BUILDERS = {"demo": demo_preset, "cpu": cpu_preset, "paper": paper_preset}


def preset(name: str) -> BatchSizeConfig:
    """The preset ``name`` of :data:`PRESETS`.

    Raises:
        StudyError: an unknown name.
    """
    if name not in _BUILDERS:
        raise StudyError(f"unknown preset {name!r}; the presets are {', '.join(PRESETS)}.")
    return _BUILDERS[name]()


def from_mapping(content: Mapping[str, Any], *, base: BatchSizeConfig) -> BatchSizeConfig:
    """``base`` with a config mapping applied (as :func:`.presets.config_from_mapping`)."""
    return config_from_mapping(content, base=base, presets=preset)


def stored(content: Mapping[str, Any]) -> BatchSizeConfig:
    """The :class:`BatchSizeConfig` stored in a ``study.json``."""
    return stored_config(content, base=demo_preset())


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunPlan:
    """One run: a model trained with one batch size from one seed.

    Attributes:
        run_id: ``<model>_b<batch size>_s<seed>``.
        model: the network's plan.
        batch_size: the minibatch size.
        seed: initialisation and minibatch order (shared by the batch sizes of a seed).
        rescale_seed: the seed of the random rescaling of the trained network.
        training: the run's training configuration.
    """

    run_id: str
    model: ModelPlan
    batch_size: int
    seed: int
    rescale_seed: int
    training: TrainingConfig


def plan_runs(config: BatchSizeConfig) -> list[RunPlan]:
    """The runs seed by seed, each model's batch sizes in turn (matched pairs finish together)."""
    return [
        RunPlan(
            run_id=f"{model.name}_b{size}_s{seed}",
            model=model,
            batch_size=size,
            seed=seed,
            rescale_seed=base.derive_seed("rescale", model.name, size, seed),
            training=config.training_config(model, seed, size),
        )
        for seed in config.seeds
        for model in config.models
        for size in config.batch_sizes
    ]


def run_fingerprint(config: BatchSizeConfig, plan: RunPlan) -> str:
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
            "rescaling": {"spread": config.rescale_spread, "seed": plan.rescale_seed},
            "measures": {
                name: dict(config.measure_options.get(name, {})) for name in config.measures
            },
            "measure_examples": config.measure_examples,
        }
    )


def random_alphas(layers: int, spread: float, seed: int) -> list[float]:
    """Random layer factors ``α_l`` with ``Π α_l = 1`` (MATH §2).

    ``log α_l`` is drawn uniformly in ``[−log s, log s]`` (float64, a generator seeded with
    ``seed``) and centred, so that the logs sum to zero.

    Example:
        >>> alphas = random_alphas(3, 10.0, 0)
        >>> round(alphas[0] * alphas[1] * alphas[2], 12)
        1.0
    """
    generator = torch.Generator().manual_seed(seed)
    logs = (2 * torch.rand(layers, generator=generator, dtype=torch.float64) - 1) * math.log(spread)
    logs -= logs.mean()
    return [math.exp(value) for value in logs.tolist()]


def execute_run(
    config: BatchSizeConfig,
    plan: RunPlan,
    data: StudyData,
    run_dir: Path,
    record: dict[str, Any],
    progress: bool = False,
) -> None:
    """Train, measure, rescale and measure again one run, filling ``record``."""
    started = time.perf_counter()
    record.update(
        model=plan.model.name,
        zoo=plan.model.zoo,
        model_options=dict(plan.model.options),
        batch_size=plan.batch_size,
        seed=plan.seed,
        training=plan.training.as_dict(),
        device=str(data.device),
        dtype=config.dtype,
        threads=torch.get_num_threads(),
    )
    model = base.build_network(plan.model, plan.seed, data)
    record["parameters"] = count_parameters(model)
    history = train_classifier(
        model,
        data.train_inputs,
        data.train_labels,
        plan.training,
        progress=progress,
        description=plan.run_id,
    )
    training_seconds = time.perf_counter() - started
    model.eval()
    train_accuracy = accuracy(model, data.train_inputs, data.train_labels)
    test_accuracy = accuracy(model, data.test_inputs, data.test_labels)
    target = plan.training.target_train_accuracy
    record.update(
        history=history.as_dict(),
        epochs_run=history.epochs_run,
        steps=sum(history.steps),
        reached_target=target is None or train_accuracy >= target,
        final_loss=history.loss[-1] if history.loss else math.nan,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        gap=train_accuracy - test_accuracy,
    )
    count = min(config.measure_examples or len(data.train_labels), len(data.train_labels))
    inputs = (data.train_inputs[:count], data.train_labels[:count])
    record["measured_on"] = {"description": MEASURED_ON, "examples": count}
    record["measures"], measure_seconds = base.measure_all(
        model, inputs, config.measures, config.measure_options
    )
    began = time.perf_counter()
    twin, record["rescaling"] = rescaled_twin(model, inputs[0], config.rescale_spread, plan)
    if twin is None:
        message = record["rescaling"]["message"]
        record["rescaled_measures"] = {
            name: {"error": "NotAChainError", "message": message, "seconds": 0.0}
            for name in config.measures
        }
    else:
        record["rescaled_measures"], _ = base.measure_all(
            twin, inputs, config.measures, config.measure_options
        )
    rescaled_seconds = time.perf_counter() - began
    save_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        model_spec=base.model_spec(plan.model, data),
        record={
            "run_id": plan.run_id,
            "batch_size": plan.batch_size,
            "seed": plan.seed,
            "training": plan.training.as_dict(),
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
            "rescaling": record["rescaling"],
        },
    )
    record.update(
        checkpoint=CHECKPOINT_DIR,
        timings={
            "training": training_seconds,
            "measures": measure_seconds,
            "rescaled_measures": rescaled_seconds,
            "total": time.perf_counter() - started,
        },
    )


def rescaled_twin(
    model: torch.nn.Module, inputs: torch.Tensor, spread: float, plan: RunPlan
) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """The randomly α-rescaled copy of ``model``, verified on ``inputs``, and its record.

    The record holds the layers in forward order, their ``α``, the spread, the seed and the
    largest relative change of the logits on ``inputs`` (``max |Δz| / max(1, max |z|)``).
    When ``model`` is no chain (:class:`~minsharp.errors.NotAChainError`), the copy is
    ``None`` and the record holds the error message.
    """
    record: dict[str, Any] = {"spread": spread, "seed": plan.rescale_seed}
    try:
        order = chain_layers(model, inputs)
        alphas = random_alphas(len(order), spread, plan.rescale_seed)
        twin = rescaled_copy(model, order, alphas)
        verify_same_function(model, twin, inputs, order)
    except NotAChainError as error:
        record.update(error="NotAChainError", message=str(error))
        return None, record
    with torch.no_grad():
        expected, got = model(inputs), twin(inputs)
    deviation = float((got - expected).abs().max() / expected.abs().max().clamp_min(1.0))
    record.update(
        layers=order,
        alphas=dict(zip(order, alphas, strict=True)),
        function_deviation=deviation,
    )
    return twin, record


def summarise_run(result: Mapping[str, Any]) -> str:
    """One line about a run: accuracies, epochs and steps, timings, failed measures."""
    if result.get("status") != "complete":
        return f"{result['run_id']}: FAILED ({result.get('error')}: {result.get('message')})"
    failed = [
        name
        for group in MEASURE_GROUPS
        for name, entry in result[group].items()
        if "error" in entry
    ]
    timings = result["timings"]
    text = (
        f"{result['run_id']}: train {result['train_accuracy']:.3f}, test "
        f"{result['test_accuracy']:.3f} after {result['epochs_run']} epochs "
        f"({result['steps']} steps); {timings['training']:.1f} s training, "
        f"{timings['measures'] + timings['rescaled_measures']:.1f} s measures"
    )
    if not result.get("reached_target", True):
        text += "; target accuracy NOT reached"
    if failed:
        text += f"; failed: {', '.join(sorted(set(failed)))}"
    return text


def _grid_text(config: BatchSizeConfig) -> str:
    return base.count_text(
        (
            (len(config.models), "model", "models"),
            (len(config.batch_sizes), "batch size", "batch sizes"),
            (len(config.seeds), "seed", "seeds"),
        )
    )


#: The batch-size study as a :class:`~minsharp.study.base.StudyKind`.
BATCH_SIZE = base.StudyKind(
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
