"""The large- vs small-batch study (Rangamani et al. 2019; theory §4): sharper large-batch minima?

Are large-batch minima sharper?

Rangamani, Nguyen, Kumar, Phan, Chin & Tran (2019, "A scale invariant flatness measure for
deep network minima") train the same networks with small-batch (SB) and large-batch (LB)
SGD and find the LB minima sharper under their rescaling-invariant measure
``λ_max(D H D)``, ``D = blockdiag(‖P‖_F I)`` (``quotient_flatness``). theory §4 gives their
networks: on MNIST an MLP with five hidden layers of 512 units and LeNet, both **without
biases** (so the layer rescaling acts on weights alone).

For every run of the grid models × batch sizes × seeds:

1. the zoo network is built under ``torch.manual_seed(seed)``, so the networks of one seed
   and model start from the same weights whatever the batch size (matched pairs), and are
   trained with :func:`~minsharp.training.train_classifier` (SGD with momentum; minibatch order
   seeded by the seed) until the target training accuracy or the epoch budget;
2. train and test accuracy and the gap ``train − test`` are recorded;
3. each measure is computed on the (first ``measure_examples``) training examples;
4. a **rescaled copy** is made: ``W_l → α_l W_l`` with random ``α`` (log-uniform in
   ``[1/s, s]``, ``s = rescale_spread``, then divided by their geometric mean so that
   ``Π α_l = 1``; theory §2), through :func:`minsharp.symmetry.rescale`, which verifies
   that the copy computes the same logits; every measure is computed on it too. An invariant
   measure gives the same value; the plain Hessian trace and top eigenvalue move.

Layout, resume and provenance are those of every study (:mod:`minsharp.study.core`). The
report (:mod:`minsharp.study.batch_size.report`) compares the smallest batch size with the
largest per model and measure, paired by seed.

What theory §4 does not state, the ``paper`` preset assumes (the report says so): Keskar et
al.'s (2017) batch sizes, 256 for SB and 10 % of the training set (6 000) for LB; SGD with
momentum 0.9 and no weight decay, lr 0.05 for the MLP and 0.01 for LeNet (the Minimum
Sharpness paper's LeNet rate), constant; training until 99.9 % training accuracy (at most
500 epochs) so that both batch sizes reach comparable minima; five seeds; the measures on all
training examples.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from minsharp.errors import NotAChainError
from minsharp.study.core import steps
from minsharp.study.core.config import (
    GridConfig,
    ModelPlan,
    Presets,
    grid_setting_holders,
    raise_kind_problems,
    sgd_training,
)
from minsharp.study.core.kind import Flag, RunContext, StudyKind
from minsharp.study.core.kind import RunPlan as GridRunPlan
from minsharp.symmetry.layerwise import chain_layers, rescaled_copy, verify_same_function
from minsharp.training import TrainingConfig

#: The measures of the presets: the three scale-invariant ones and the two plain baselines.
MEASURES: tuple[str, ...] = (
    "quotient_flatness",
    "minimum_sharpness",
    "normalized_sharpness",
    "hessian_trace",
    "top_eigenvalue",
)

#: What a run's checkpoint records besides the weights: these entries of its result.
CHECKPOINT_KEYS = (
    "run_id",
    "batch_size",
    "seed",
    "training",
    "train_accuracy",
    "test_accuracy",
    "rescaling",
)


@dataclass(frozen=True, kw_only=True)
class BatchSizeConfig(GridConfig):
    """Everything that decides the results of a batch-size study.

    The fields of every kind are :class:`~minsharp.study.core.config.GridConfig`'s (a seed gives
    the same initial weights to every batch size; ``training`` holds no ``batch_size``; the
    measures, :data:`MEASURES` by default, are also computed on the rescaled copies); this
    kind's own:

    Attributes:
        batch_sizes: the batch sizes compared (at least two; the smallest is "small batch",
            the largest "large batch").
        rescale_spread: ``s > 1``: each ``α_l`` is drawn log-uniformly in ``[1/s, s]``
            before the product is normalised to 1.
    """

    AXES = (
        ("models", "model", "models"),
        ("batch_sizes", "batch size", "batch sizes"),
        ("seeds", "seed", "seeds"),
    )

    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...] = MEASURES
    measure_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    measure_examples: int | None = None
    rescale_spread: float = 10.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validate(self)

    def training_config(
        self, model: ModelPlan, seed: int, batch_size: int | None = None
    ) -> TrainingConfig:
        """The training of one run (``batch_size`` default: the smallest of the grid)."""
        size = min(self.batch_sizes) if batch_size is None else batch_size
        return TrainingConfig(**{**self.training, **model.training}, batch_size=size, seed=seed)


def validate(config: BatchSizeConfig) -> None:
    """Check a configuration; raise :class:`StudyError` naming the problems found.

    First: at least two distinct positive batch sizes, no ``batch_size`` in the training
    settings (the grid sets it), and ``rescale_spread > 1``; when these hold, the checks
    shared by every study (:func:`~minsharp.study.core.config.common_problems`).
    """
    problems: list[str] = []
    sizes = config.batch_sizes
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        problems.append(f"batch_sizes must be at least two integers; got {list(sizes)}")
    elif min(sizes) < 1 or len(set(sizes)) != len(sizes):
        problems.append(f"batch_sizes must be distinct positive integers; got {list(sizes)}")
    holders = grid_setting_holders(config, BatchSize.grid_training)
    if holders:
        problems.append(
            f"{' and '.join(holders)} set batch_size, which the grid's batch_sizes decide; "
            "remove it"
        )
    spread = config.rescale_spread
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not spread > 1:
        problems.append(f"rescale_spread must be a number above 1; got {spread!r}")
    raise_kind_problems(config, problems)


# --------------------------------------------------------------------------- presets


#: The presets' training besides :func:`~minsharp.study.core.config.sgd_training`'s SGD: no
#: weight decay, a constant rate, until 99.9 % training accuracy (theory §4 states none).
TRAINING: dict[str, Any] = {
    "epochs": 500,
    "weight_decay": 0.0,
    "lr_decay": 0.0,
    "target_train_accuracy": 0.999,
}


def _tolerances(tolerance: float) -> dict[str, dict[str, Any]]:
    """The Lanczos measures to a relative residual of ``tolerance``."""
    return {name: {"tolerance": tolerance} for name in ("quotient_flatness", "top_eigenvalue")}


def demo_preset() -> BatchSizeConfig:
    """``demo``: digits, a bias-free MLP 64-64-64-10, batches 16 vs 512, 3 seeds (≈ 20 s)."""
    return BatchSizeConfig(
        preset="demo",
        dataset="digits",
        batch_sizes=(16, 512),
        seeds=(0, 1, 2),
        models=(ModelPlan("mlp", "mlp", {"hidden": [64, 64], "bias": False}),),
        training=sgd_training(TRAINING, epochs=400, target_train_accuracy=1.0),
        measure_options=_tolerances(1e-4),
    )


def cpu_preset() -> BatchSizeConfig:
    """``cpu``: the ``paper`` networks and seeds on 2 000/2 000 MNIST images, 64 vs 500."""
    return dataclasses.replace(
        paper_preset(),
        preset="cpu",
        train_size=2000,
        test_size=2000,
        batch_sizes=(64, 500),
        training=sgd_training(TRAINING, epochs=300, target_train_accuracy=0.995),
        measure_options=_tolerances(1e-3),
        measure_examples=500,
    )


def paper_preset() -> BatchSizeConfig:
    """``paper``: full MNIST, MLP 5×512 and LeNet without biases, SB 256 vs LB 6 000, 5 seeds.

    Theory §4's networks: MLP 784-512×5-10 and LeNet (lr 0.01), both without biases.
    """
    return BatchSizeConfig(
        preset="paper",
        dataset="mnist",
        batch_sizes=(256, 6000),
        seeds=tuple(range(5)),
        models=(
            ModelPlan("mlp", "mlp", {"hidden": [512] * 5, "bias": False}),
            ModelPlan("lenet", "lenet", {"bias": False}, training={"lr": 0.01}),
        ),
        training=sgd_training(TRAINING),
        measure_options=_tolerances(1e-4),
    )


#: The presets by name (``preset("cpu")`` builds one; ``preset.names`` lists them).
preset = Presets(demo=demo_preset, cpu=cpu_preset, paper=paper_preset)


# --------------------------------------------------------------------------- runs


#: ``minsharp study batch-size --help``: what the study does and its presets.
DESCRIPTION = """\
Large- vs small-batch minima (Rangamani et al. 2019, theory §4): train matched networks (the same
initial weights per seed) with a small and a large batch size until a target training
accuracy, then measure each with quotient-manifold flatness, Minimum Sharpness, normalized
sharpness, the Hessian trace and the top eigenvalue, together with a randomly layer-rescaled
copy of it (the same function, verified). The report compares the batch sizes per measure,
paired by seed, says whether large-batch minima came out sharper under the invariant measure,
and shows which measures move under the rescaling.

presets:
  demo   digits (bundled), a bias-free MLP 64-64-64-10, batches 16 vs 512, 3 seeds (~20 s)
  cpu    2000/2000 MNIST images, the bias-free MLP 784-512x5-10 and LeNet, batches 64 vs 500,
         5 seeds (about 7 min on 2 cores, 16 min on one)
  paper  full MNIST, batches 256 vs 6000 (Keskar et al.'s, assumed), 5 seeds (a GPU machine)
"""


@dataclass(frozen=True)
class RunPlan(GridRunPlan):
    """One run: a model trained with one batch size from one seed (shared by its batch sizes).

    Attributes:
        batch_size: the minibatch size.
    """

    batch_size: int

    @property
    def run_id(self) -> str:
        """``<model>_b<batch size>_s<seed>``, the name of its directory."""
        return f"{self.model.name}_b{self.batch_size}_s{self.seed}"

    @property
    def rescale_seed(self) -> int:
        """The seed of the random rescaling of the trained network."""
        return steps.derive_seed("rescale", self.model.name, self.batch_size, self.seed)


def random_alphas(layers: int, spread: float, seed: int) -> list[float]:
    """Random layer factors ``α_l`` with ``Π α_l = 1`` (theory §2).

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
        deviation = verify_same_function(model, twin, inputs, order)
    except NotAChainError as error:
        record.update(error="NotAChainError", message=str(error))
        return None, record
    record.update(
        layers=order,
        alphas=dict(zip(order, alphas, strict=True)),
        function_deviation=deviation,
    )
    return twin, record


class BatchSize(StudyKind[BatchSizeConfig, RunPlan]):
    """The batch-size study as a :class:`~minsharp.study.core.kind.StudyKind`."""

    name = "batch-size"
    run_plan = RunPlan
    presets = preset
    measured_on = "the training inputs with their labels, after the last epoch"
    result_numbers = ("train_accuracy", "test_accuracy", "gap", "batch_size", "seed")
    #: The trained network's measures, and its rescaled copy's.
    measure_groups = ("measures", "rescaled_measures")
    axis = "batch_sizes"
    grid_training = ("batch_size",)
    flags = (
        Flag(
            "--batch-sizes",
            "batch_sizes",
            "batch sizes compared, e.g. 64,500",
            "B,B,…",
            comma_list=int,
        ),
        Flag(
            "--rescale-spread", "rescale_spread", "α_l drawn log-uniformly in [1/S, S]", "S", float
        ),
    )
    help = "large- vs small-batch minima under invariant and plain measures"
    description = DESCRIPTION
    paper_note = "trains 20 networks on full MNIST, the large-batch ones for up to 500 epochs"

    def fingerprint(self, config: BatchSizeConfig, plan: RunPlan) -> str:
        """SHA-256 of every setting that decides a run's result, its rescaling's included."""
        rescaling = {"spread": config.rescale_spread, "seed": plan.rescale_seed}
        return steps.run_fingerprint(self.name, config, plan, rescaling=rescaling)

    def execute(self, config: BatchSizeConfig, plan: RunPlan, run: RunContext) -> None:
        """Train, measure, rescale and measure again one run, filling its record."""
        started = time.perf_counter()
        data, record = run.data, run.record
        record.update(steps.run_settings(plan, data, config.dtype, batch_size=plan.batch_size))
        model = steps.build_network(plan, run)
        history = steps.train(model, plan, run, data.train_labels)
        training_seconds = time.perf_counter() - started
        scores = steps.evaluate(model, data, data.train_labels)
        target = plan.training.target_train_accuracy
        during = {
            "steps": sum(history.steps),
            "reached_target": target is None or scores[0] >= target,
        }
        record.update(steps.training_outcome(history, scores, during=during))
        inputs = steps.measured_examples(
            data.train_inputs, data.train_labels, config.measure_examples, record, self.measured_on
        )
        options = config.measure_settings()
        record["measures"], measure_seconds = steps.measure_all(
            model, inputs, config.measures, options
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
            record["rescaled_measures"], _ = steps.measure_all(
                twin, inputs, config.measures, options
            )
        rescaled_seconds = time.perf_counter() - began
        steps.save_network(model, plan, run, CHECKPOINT_KEYS)
        record["timings"] = {
            "training": training_seconds,
            "measures": measure_seconds,
            "rescaled_measures": rescaled_seconds,
            "total": time.perf_counter() - started,
        }

    def summarise(self, result: Mapping[str, Any]) -> str:
        """One line about a complete run: accuracies, epochs and steps, timings, failed measures."""
        failed = {
            name
            for group in self.measure_groups
            for name, entry in result[group].items()
            if "error" in entry
        }
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
            text += f"; failed: {', '.join(sorted(failed))}"
        return text


#: The batch-size study.
BATCH_SIZE = BatchSize()
