"""The steps every run of every study kind shares, and the fingerprint of a run's settings.

A kind's :meth:`~minsharp.study.core.kind.StudyKind.execute` is built from them, each given
the run's :class:`~minsharp.study.core.kind.RunContext` where it needs one:
:func:`run_settings` (what the record states first), :func:`build_network`, :func:`train`,
:func:`evaluate` and :func:`training_outcome` (accuracies, gap, history),
:func:`measured_examples` and :func:`measure_all`, :func:`save_network`; its fingerprint is
:func:`run_fingerprint` with the kind's own settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from minsharp.io import jsonable, write_bytes_atomic
from minsharp.measures import measure
from minsharp.models import count_parameters, is_factory_spec, make_model
from minsharp.study.core.config import GridConfig
from minsharp.study.core.kind import RunContext, RunPlan, StudyData
from minsharp.study.core.store import CHECKPOINT_DIR, FORMAT_VERSION
from minsharp.training import TrainingHistory, accuracy, save_checkpoint, train_classifier
from minsharp.training.checkpoint import WEIGHTS_FILE


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2³¹) determined by ``parts`` (SHA-256 of their JSON), stable everywhere.

    Example:
        >>> derive_seed("corruption", 0, "0.5") == derive_seed("corruption", 0, "0.5")
        True
    """
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of ``settings`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(
    kind: str, config: GridConfig, plan: RunPlan, **settings: Mapping[str, Any]
) -> str:
    """The :func:`fingerprint` of every setting that decides a run of study kind ``kind``.

    The data, the model, its training, the measures with their options
    (:meth:`~minsharp.study.core.config.GridConfig.measure_settings`) and the examples they are
    computed on, plus the kind's own ``settings`` (e.g. the run's label corruption).
    """
    return fingerprint(
        {
            "kind": kind,
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
            "measures": config.measure_settings(),
            "measure_examples": config.measure_examples,
            **settings,
        }
    )


def run_settings(plan: RunPlan, data: StudyData, dtype: str, **axes: Any) -> dict[str, Any]:
    """What every run records first: model, values on the grid's ``axes``, seed, training, where."""
    return {
        "model": plan.model.name,
        "zoo": plan.model.zoo,
        "model_options": dict(plan.model.options),
        **axes,
        "seed": plan.seed,
        "training": plan.training.as_dict(),
        "device": str(data.device),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
    }


def build_network(plan: RunPlan, run: RunContext) -> nn.Module:
    """The network of a run (zoo or factory) initialised under ``torch.manual_seed(plan.seed)``.

    The caller's global generator is left as it was; the network is on the data's device in
    their dtype, and its parameter count goes into the run's record.
    """
    data = run.data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        network, _ = make_model(
            plan.model.zoo, dict(plan.model.options), data.input_shape, data.num_classes
        )
    run.record["parameters"] = count_parameters(network)
    return network.to(device=data.device, dtype=data.train_inputs.dtype)


def train(
    model: nn.Module, plan: RunPlan, run: RunContext, labels: Tensor, *, test: bool = False
) -> TrainingHistory:
    """Train ``model`` on the training inputs with ``labels`` as ``plan.training`` says.

    :func:`minsharp.training.train_classifier`, its progress bar named by the run id; with
    ``test``, the test accuracy is recorded after every epoch in the history.
    """
    data = run.data
    return train_classifier(
        model,
        data.train_inputs,
        labels,
        plan.training,
        test=(data.test_inputs, data.test_labels) if test else None,
        progress=run.progress,
        description=plan.run_id,
    )


def evaluate(model: nn.Module, data: StudyData, labels: Tensor) -> tuple[float, float]:
    """Put ``model`` in eval mode; its accuracy on the training inputs with ``labels``, and test."""
    model.eval()
    train = accuracy(model, data.train_inputs, labels)
    return train, accuracy(model, data.test_inputs, data.test_labels)


def training_outcome(
    history: TrainingHistory,
    accuracies: tuple[float, float],
    *,
    during: Mapping[str, Any] | None = None,
    fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What every run records of its training: history, epochs, final loss, accuracies, gap.

    ``during`` (a kind's facts of the training, e.g. its steps) come after the epochs, ``fit``
    (other accuracies) after the train accuracy; the gap is train − test accuracy.
    """
    train, test = accuracies
    return {
        "history": history.as_dict(),
        "epochs_run": history.epochs_run,
        **(during or {}),
        "final_loss": history.loss[-1] if history.loss else math.nan,
        "train_accuracy": train,
        **(fit or {}),
        "test_accuracy": test,
        "gap": train - test,
    }


def measured_examples(
    inputs: Tensor, labels: Tensor, examples: int | None, record: dict[str, Any], on: str
) -> tuple[Tensor, Tensor]:
    """The first ``examples`` (``None``: all) of ``inputs`` and ``labels``, noted in ``record``.

    ``record["measured_on"]`` gets the description ``on`` and the number of examples.
    """
    count = len(labels) if examples is None else min(examples, len(labels))
    record["measured_on"] = {"description": on, "examples": count}
    return inputs[:count], labels[:count]


def save_network(model: nn.Module, plan: RunPlan, run: RunContext, keys: Sequence[str]) -> None:
    """Save ``model`` in the run's ``checkpoint`` folder with the entries ``keys`` of its record.

    :func:`minsharp.training.save_checkpoint` writes the weights and what rebuilds the network;
    ``record["checkpoint"]`` names the folder. The network of a user's factory is rebuilt
    only by running their code, which :func:`~minsharp.training.load_checkpoint` never does
    for what a file says: its folder holds the weights alone (``model.safetensors``, for
    ``minsharp measure --model package.module:function --weights``).
    """
    data, record = run.data, run.record
    if is_factory_spec(plan.model.zoo):
        state = {
            key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()
        }
        payload = safetensors_bytes(state)
        (run.directory / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(run.directory / CHECKPOINT_DIR / WEIGHTS_FILE, payload)
        record["weights_sha256"] = hashlib.sha256(payload).hexdigest()  # checked on resuming
    else:
        save_checkpoint(
            run.directory / CHECKPOINT_DIR,
            model,
            model_spec={
                "name": plan.model.zoo,
                "input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "options": dict(plan.model.options),
            },
            record={key: record[key] for key in keys},
        )
    record["checkpoint"] = CHECKPOINT_DIR


def measure_all(
    model: nn.Module,
    inputs: tuple[Tensor, Tensor],
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], float]:
    """Every measure of ``names`` on ``model`` and ``inputs``; ``(entries, seconds)``.

    Each entry is :meth:`~minsharp.measures.MeasureResult.to_dict` without the name, or
    ``{"error", "message", "seconds"}`` for a measure that failed (the others go on).
    Warnings a measure raises (a solver stopping early…) are kept under ``"warnings"``.
    """
    entries: dict[str, Any] = {}
    started = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = measure(name, model, inputs, **dict(options.get(name, {})))
            except Exception as error:  # recorded for this run; the other measures go on
                entries[name] = {
                    "error": type(error).__name__,
                    "message": str(error) or type(error).__name__,
                    "seconds": time.perf_counter() - began,
                }
            else:
                entries[name] = {
                    key: value for key, value in result.to_dict().items() if key != "name"
                }
        if caught:  # e.g. a solver that stopped early: kept with the value, not printed
            entries[name]["warnings"] = [str(warning.message) for warning in caught]
    return entries, time.perf_counter() - started
