"""Training for the experiments: SGD with momentum, weight decay and a decaying learning rate.

The optimiser is the one of the Minimum Sharpness paper's randomized-label experiment
(theory §6): SGD with momentum and weight decay, cross-entropy loss, and the learning rate

    η_t = η₀ / (1 + λ·t),   t = number of minibatch steps already taken (0 for the first),

with ``η₀ = config.lr`` and ``λ = config.lr_decay``. Training is deterministic given
``config.seed``: minibatches come from a permutation drawn with a generator seeded by it, and
anything a model draws from the global generator (dropout…) is drawn from it reseeded with
``config.seed`` (the caller's global state is restored afterwards). On CPU the same seed and
the same initial weights give bit-identical trained weights.

With ``config.bn_sharpness_weight = λ > 0`` each step follows the gradient of
``L + λ·S_BN`` instead of ``L`` (Yi et al. 2019, theory §5, reconstructed):
``ĝ = (1 − λ)·∇L(w) + λ·∇L(w + t v)`` with ``t ~ U(0, δ)`` and the BN-sharpness direction
``v`` held fixed, before weight decay and momentum (:mod:`minsharp.training.bn_penalty`, where the
combination is derived).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp.curvature.engine import run_forward
from minsharp.curvature.layers import preserved_buffers
from minsharp.data.batches import check_label_range
from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.measures.bn_sharpness import DEFAULT_DELTA
from minsharp.options import integer, nn_module
from minsharp.tensors import all_finite, check_labels
from minsharp.training.bn_penalty import PROBE_EXAMPLES, BNSharpnessPenalty, check_penalty_settings

#: Examples per forward pass when measuring accuracy (no gradients are kept).
EVAL_BATCH_SIZE = 8192


@dataclass(frozen=True)
class TrainingConfig:
    """SGD with momentum and the learning rate ``lr / (1 + lr_decay · t)``, t = steps taken.

    Attributes:
        epochs: the most passes over the training set (fewer when the target is reached).
        batch_size: examples per minibatch; the last minibatch of an epoch may be smaller.
        lr: the initial learning rate η₀.
        momentum: SGD momentum (PyTorch's form: ``v ← μ·v + g``, ``w ← w − η_t·v``).
        weight_decay: L2 coefficient added to the gradient (``g ← g + wd·w``).
        lr_decay: λ of the schedule ``η_t = η₀ / (1 + λ·t)`` (theory §6: 1e−4).
        seed: seeds the minibatch order (and the global generator during training).
        target_train_accuracy: stop after the first epoch whose training accuracy, measured
            in eval mode on the whole training set, is at least this; ``None`` trains for all
            ``epochs``.
        bn_sharpness_weight: λ of the BN-sharpness penalty ``L + λ·S_BN`` (theory §5); 0 (the
            default) is plain SGD. Needs a network with batch-norm.
        bn_sharpness_delta: δ of the penalty, the largest radius ``t ~ U(0, δ)`` relative
            to each block's norm, in (0, 1].

    Raises:
        MinsharpError: a value out of range (negative epochs, non-positive batch size or
            learning rate, negative momentum/decays, a seed torch's generators refuse, a
            target outside (0, 1], a negative penalty weight, a radius outside (0, 1]).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_decay: float = 1e-4
    seed: int = 0
    target_train_accuracy: float | None = None
    bn_sharpness_weight: float = 0.0
    bn_sharpness_delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 0:
            problems.append(f"epochs must be a non-negative integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        for name in ("momentum", "weight_decay", "lr_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a non-negative number, got {value!r}")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not -(2**63) <= self.seed < 2**64
        ):
            problems.append(
                f"seed must be an integer in [-2**63, 2**64), the range of torch's generators, "
                f"got {self.seed!r}"
            )
        target = self.target_train_accuracy
        if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
            problems.append(f"target_train_accuracy must be in (0, 1] or None, got {target!r}")
        problems += check_penalty_settings(self.bn_sharpness_weight, self.bn_sharpness_delta)
        if problems:
            raise MinsharpError(f"invalid training config: {'; '.join(problems)}.")

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-able) dictionary.

        Without the BN-sharpness penalty (``bn_sharpness_weight == 0``) its two fields are
        left out, so the dictionary (and every study fingerprint made from it) is the one of
        plain SGD from before the penalty existed.
        """
        fields = dataclasses.asdict(self)
        if self.bn_sharpness_weight == 0:
            del fields["bn_sharpness_weight"], fields["bn_sharpness_delta"]
        return fields


def learning_rate(config: TrainingConfig, step: int) -> float:
    """The learning rate of minibatch step ``step`` (counted from 0): ``lr / (1 + lr_decay·t)``.

    This is the schedule of the Minimum Sharpness paper's randomized-label experiment
    (theory §6), with t the number of steps taken before this one.

    Example:
        >>> learning_rate(TrainingConfig(lr=0.1, lr_decay=1e-4), 10_000)
        0.05

    Raises:
        MinsharpError: ``config`` is not a :class:`TrainingConfig`, or ``step`` is not a
            non-negative integer.
    """
    _check_config(config)
    integer("step", step, minimum=0)
    return config.lr / (1.0 + config.lr_decay * step)


@dataclass
class TrainingHistory:
    """What happened in each epoch of :func:`train_classifier` (one entry per epoch run).

    Attributes:
        loss: mean cross-entropy over the epoch's minibatches, weighted by their sizes, as
            the batches were seen (train mode, weights changing during the epoch).
        accuracy: fraction of the epoch's examples classified correctly as the batches were
            seen (same caveats as ``loss``).
        train_accuracy: accuracy on the whole training set after the epoch, in eval mode.
        test_accuracy: accuracy on the test set after the epoch, in eval mode; empty when no
            test set was given.
        learning_rate: the learning rate of the epoch's last minibatch step.
        seconds: wall-clock seconds of the epoch, evaluation included.
        step_seconds: wall-clock seconds of the epoch's optimisation steps alone (the
            minibatch loop, up to reading back its loss), without the evaluation.
        steps: minibatch steps taken in each epoch.
        epochs_run: number of epochs run (the length of each list above).
        stopped_early: whether training stopped before ``config.epochs`` because
            ``train_accuracy`` reached ``config.target_train_accuracy``.
    """

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    epochs_run: int = 0
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-able) dictionary."""
        return dataclasses.asdict(self)


def train_classifier(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    config: TrainingConfig,
    *,
    test: tuple[Tensor, Tensor] | None = None,
    progress: bool = False,
    description: str = "training",
) -> TrainingHistory:
    """Train ``model`` in place on ``(inputs, labels)`` with cross-entropy; deterministic.

    Each epoch visits the training set in an order drawn by ``torch.randperm`` from a
    generator seeded with ``config.seed``, in minibatches of ``config.batch_size``; step t
    (counted over all epochs from 0) uses the learning rate ``lr / (1 + lr_decay·t)``
    (theory §6); with ``config.bn_sharpness_weight > 0`` the penalised gradient of the module
    text (its radius drawn from a generator of its own, so the order stays the same). After
    each epoch the accuracy on the training set (and ``test``) is measured in eval mode;
    training stops once it reaches ``config.target_train_accuracy``. Ends in eval mode.

    Args:
        model: the network, already initialised, updated in place.
        inputs: training inputs ``(N, …)`` on the model's device.
        labels: class indices ``(N,)``.
        config: the optimiser, schedule, epochs, seed and early-stopping target.
        test: optional ``(inputs, labels)`` evaluated after each epoch.
        progress: show a progress bar over epochs (on stderr).
        description: the progress bar's label.

    Returns:
        The per-epoch history.

    Raises:
        DataError: inputs and labels that do not pair up, empty or non-finite, or labels
            that are not class indices of the model's outputs.
        ModelError: the model is not a module or cannot take the inputs; the run diverged
            (non-finite loss or logits: lower ``lr``); the penalty without batch-norm.
        MinsharpError: ``config`` is not a :class:`TrainingConfig`.
    """
    _check_training(model, inputs, labels, config, test)
    epoch_runner = _EpochRunner(model, inputs, labels, config)
    history = TrainingHistory()
    bar = tqdm(
        range(config.epochs), desc=description, unit="epoch", disable=not progress, leave=False
    )
    with bar, torch.random.fork_rng(devices=epoch_runner.cuda_devices):
        torch.manual_seed(config.seed)
        for epoch in bar:
            start = time.perf_counter()
            seen = epoch_runner.run_epoch()
            history.step_seconds.append(time.perf_counter() - start)
            _evaluate_epoch(history, epoch_runner, test, epoch, seen)
            history.seconds.append(time.perf_counter() - start)
            history.epochs_run = epoch + 1
            if progress:
                bar.set_postfix(_progress_fields(history, test is not None), refresh=False)
            if _target_reached(history, config):
                break
    model.eval()
    return history


def _check_training(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    config: TrainingConfig,
    test: tuple[Tensor, Tensor] | None,
) -> None:
    """The checks of :func:`train_classifier`'s arguments, before any training."""
    nn_module("model", model)
    _check_config(config)
    _check_data(inputs, labels, "training")
    _check_fit(model, inputs, labels, "training")
    if test is not None:
        if not (isinstance(test, (tuple, list)) and len(test) == 2):
            raise DataError(
                f"test must be a pair (inputs, labels) of tensors; got a {type(test).__name__}."
            )
        _check_data(*test, "test")
        _check_fit(model, *test, "test")


class _EpochRunner:
    """The optimiser, the minibatch order and the step count of one training run."""

    def __init__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor, config: TrainingConfig
    ) -> None:
        self.model, self.inputs, self.labels, self.config = model, inputs, labels, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.penalty = (
            BNSharpnessPenalty(
                model,
                inputs[:PROBE_EXAMPLES],
                weight=config.bn_sharpness_weight,
                delta=config.bn_sharpness_delta,
                seed=config.seed,
            )
            if config.bn_sharpness_weight > 0 and config.epochs > 0
            else None
        )
        self.step = 0
        #: The CUDA devices whose generators training forks (dropout may draw from them).
        self.cuda_devices = sorted(
            {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
        )

    def run_epoch(self) -> tuple[float, float, float]:
        """One pass over the training set in train mode.

        Returns:
            The mean loss and the accuracy of the minibatches as they were seen, and the
            learning rate of the last step.
        """
        model, labels, config = self.model, self.labels, self.config
        count = len(labels)
        model.train()
        order = torch.randperm(count, generator=self.generator).to(labels.device)
        total_loss = torch.zeros((), dtype=torch.float64, device=labels.device)
        correct = torch.zeros((), dtype=torch.int64, device=labels.device)
        rate = config.lr
        for begin in range(0, count, config.batch_size):
            batch = order[begin : begin + config.batch_size]
            rate = learning_rate(config, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            targets = labels[batch]
            logits, loss = self._gradient(self.inputs[batch], targets)
            self.optimizer.step()
            self.step += 1
            with torch.no_grad():
                total_loss += loss.detach().double() * len(batch)
                correct += (logits.argmax(1) == targets).sum()
        return float(total_loss) / count, int(correct) / count, rate

    def _gradient(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Fill the parameters' gradients for one minibatch; its logits and loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.penalty is None:
            logits = self.model(inputs)
            loss = F.cross_entropy(logits, targets)
            loss.backward()
            return logits, loss
        taken = self.penalty.gradient(self.model, inputs, targets)
        return taken.logits, taken.loss


def _evaluate_epoch(
    history: TrainingHistory,
    runner: _EpochRunner,
    test: tuple[Tensor, Tensor] | None,
    epoch: int,
    seen: tuple[float, float, float],
) -> None:
    """Record an epoch's loss, accuracies and rate; raise if the run diverged."""
    config = runner.config
    mean_loss, seen_accuracy, rate = seen
    history.steps.append(math.ceil(len(runner.labels) / config.batch_size))
    settings = f"(lr {config.lr}, batch size {config.batch_size})"
    if not math.isfinite(mean_loss):
        raise ModelError(
            f"training diverged: the mean loss of epoch {epoch + 1} is {mean_loss} "
            f"{settings}; lower the learning rate."
        )
    history.loss.append(mean_loss)
    history.accuracy.append(seen_accuracy)
    history.learning_rate.append(rate)
    try:
        history.train_accuracy.append(_eval_accuracy(runner.model, runner.inputs, runner.labels))
        if test is not None:
            history.test_accuracy.append(_eval_accuracy(runner.model, *test))
    except ModelError as error:  # the data fit the model before: its weights blew up
        raise ModelError(
            f"training diverged: after epoch {epoch + 1}, {error} {settings}; lower the "
            "learning rate."
        ) from None


def _target_reached(history: TrainingHistory, config: TrainingConfig) -> bool:
    """Whether the last epoch reached the target accuracy (noting an early stop)."""
    target = config.target_train_accuracy
    if target is None or history.train_accuracy[-1] < target:
        return False
    history.stopped_early = history.epochs_run < config.epochs
    return True


def _progress_fields(history: TrainingHistory, with_test: bool) -> dict[str, str]:
    shown = {"loss": f"{history.loss[-1]:.4f}", "train": f"{history.train_accuracy[-1]:.3f}"}
    if with_test:
        shown["test"] = f"{history.test_accuracy[-1]:.3f}"
    return shown


def _check_config(config: Any) -> None:
    if not isinstance(config, TrainingConfig):
        raise MinsharpError(
            f"config must be a minsharp.training.sgd.TrainingConfig; got a {type(config).__name__}."
        )


def _check_data(inputs: Tensor, labels: Tensor, what: str, *, empty: bool = False) -> None:
    """Raise :class:`DataError` unless ``inputs`` and ``labels`` make a labelled data set.

    Checked: tensors that pair up (inputs (N, …), labels (N,)), integer labels ≥ 0, finite
    inputs, and at least one example unless ``empty``.
    """
    if not isinstance(inputs, Tensor) or not isinstance(labels, Tensor):
        kinds = f"{type(inputs).__name__} and {type(labels).__name__}"
        raise DataError(f"{what} inputs and labels must be tensors; got a {kinds}.")
    if inputs.dim() == 0:
        raise DataError(f"{what} inputs must have an example axis (N, …); got a 0-d tensor.")
    check_labels(labels, inputs.shape[0], f"{what} data")
    if len(labels) == 0:
        if empty:
            return
        raise DataError(f"the {what} set is empty.")
    if inputs.is_floating_point() and not all_finite(inputs):
        raise DataError(
            f"{what} inputs contain NaN or infinite values; clean or drop those examples."
        )


def _check_fit(model: nn.Module, inputs: Tensor, labels: Tensor, what: str) -> None:
    """Raise unless ``model`` takes ``inputs`` and has an output for every label.

    One example runs through the model in eval mode without gradients; the modules' modes
    and buffers are restored afterwards, so training starts from the model as given.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with preserved_buffers(model), torch.no_grad():
            logits = run_forward(model, inputs[:1])
    finally:
        for module, mode in modes:
            module.training = mode
    try:
        check_label_range(int(labels.max()), logits.shape[1])
    except DataError as error:
        raise DataError(f"{what} {error}") from None


def _eval_accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """:func:`accuracy` in eval mode, restoring the model's train/eval mode afterwards.

    For data :func:`train_classifier` has checked already: only the logits are checked.
    """
    was_training = model.training
    model.eval()
    try:
        return _correct_fraction(model, inputs, labels, EVAL_BATCH_SIZE)
    finally:
        model.train(was_training)


@torch.no_grad()
def accuracy(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = EVAL_BATCH_SIZE
) -> float:
    """Fraction of ``inputs`` whose arg-max logit is the label.

    Runs without gradients in chunks of ``batch_size`` examples, in the model's current
    train/eval mode. Returns ``nan`` for an empty set.

    Raises:
        DataError: inputs and labels that do not pair up, non-finite inputs, labels that are
            not class indices of the model's outputs, or a batch size below 1.
        ModelError: the model is not a module, cannot take the inputs or returns no finite
            logits (N, K).
    """
    nn_module("model", model)
    integer("batch_size", batch_size, minimum=1, error=DataError)
    _check_data(inputs, labels, "accuracy", empty=True)
    if len(labels) == 0:
        return float("nan")
    return _correct_fraction(model, inputs, labels, batch_size)


@torch.no_grad()
def _correct_fraction(model: nn.Module, inputs: Tensor, labels: Tensor, batch_size: int) -> float:
    """The fraction of correct arg-max predictions, checking only the logits and label range."""
    largest = int(labels.max())
    correct = 0
    for begin in range(0, len(labels), batch_size):
        logits = run_forward(model, inputs[begin : begin + batch_size])
        check_label_range(largest, logits.shape[1])
        correct += int((logits.argmax(1) == labels[begin : begin + batch_size]).sum())
    return correct / len(labels)
