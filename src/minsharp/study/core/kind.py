"""What a study kind is: its runs' plans, the data they share, its flags and its methods.

A kind (:class:`StudyKind`) says what one run of a grid is — how runs are planned from a
configuration (:class:`RunPlan`), what settings decide a run's result (its fingerprint), how
a run is executed on the study's data (:class:`StudyData`) and summarised — and what the
command line offers for it: its override flags (:class:`Flag`), help texts, the note of its
``paper`` preset and its default directory. The kinds are listed in :mod:`minsharp.study.kinds`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from minsharp.data.datasets import Splits
from minsharp.errors import StudyError
from minsharp.study.core.config import GridConfig, ModelPlan, Presets
from minsharp.training import TrainingConfig


@dataclass(frozen=True)
class RunPlan:
    """One run of a study's grid, as every kind plans it; a kind adds its axis and the run id.

    Attributes:
        model: the network's plan.
        seed: the network's initialisation and the minibatch order, shared by the runs of a
            seed that a kind compares.
        training: the run's training configuration.
    """

    model: ModelPlan
    seed: int
    training: TrainingConfig

    @property
    def run_id(self) -> str:
        """The run's id, the name of its directory."""
        raise NotImplementedError


@dataclass(frozen=True)
class StudyData:
    """A study's data on the compute device (inputs in the study's dtype)."""

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    num_classes: int

    @classmethod
    def from_splits(cls, splits: Splits, device: torch.device) -> StudyData:
        """``splits`` moved to ``device``."""
        return cls(
            splits.train_inputs.to(device),
            splits.train_labels.to(device),
            splits.test_inputs.to(device),
            splits.test_labels.to(device),
            splits.num_classes,
        )

    @property
    def device(self) -> torch.device:
        """Where the data live."""
        return self.train_inputs.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.train_inputs.shape[1:])


@dataclass(frozen=True)
class RunContext:
    """What one run is executed with besides its configuration and plan.

    Attributes:
        data: the study's data on the compute device.
        directory: the run's directory (``DIR/runs/<run-id>``), where its checkpoint goes.
        record: the run's result, which the kind fills (it already holds the format, the run
            id and the fingerprint); the runner writes it.
        progress: whether to show progress bars.
    """

    data: StudyData
    directory: Path
    record: dict[str, Any]
    progress: bool = False


ConfigT = TypeVar("ConfigT", bound=GridConfig)
PlanT = TypeVar("PlanT", bound=RunPlan)


NumberT = TypeVar("NumberT", int, float)


def comma_numbers(text: str, flag: str, read: Callable[[str], NumberT]) -> tuple[NumberT, ...]:
    """The comma-separated numbers of ``text`` (empty parts skipped), each read with ``read``.

    Example:
        >>> comma_numbers("0,0.5,1", "--ratios", float)
        (0.0, 0.5, 1.0)

    Raises:
        StudyError: a part is not a number of that type, or there is none.
    """
    what = "integers, e.g. 64,1000" if read is int else "numbers, e.g. 0,0.5,1"
    try:
        values = tuple(read(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise StudyError(f"{flag} must be comma-separated {what}; got {text!r}.") from None
    if not values:
        raise StudyError(f"{flag} is empty.")
    return values


@dataclass(frozen=True)
class Flag:
    """A command-line flag of ``minsharp study <kind>`` that overrides one field of its config.

    Attributes:
        name: the flag, e.g. ``"--ratios"``; ``args`` holds it under its name without the
            dashes, ``-`` read as ``_``.
        field: the configuration field it sets.
        help: its help text.
        metavar: how the help shows its value.
        type: what argparse reads the value with (``None``: the text).
        choices: the values it accepts, if only these.
        comma_list: the value is a comma-separated list of numbers of this type (a tuple).
        after_shared: listed after the flags every kind has, rather than before them.
    """

    name: str
    field: str
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    comma_list: type[int] | type[float] | None = None
    after_shared: bool = False

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the flag's value."""
        return self.name.removeprefix("--").replace("-", "_")

    def add_to(self, group: Any) -> None:
        """Add the flag to an argparse parser or argument group."""
        options = {"metavar": self.metavar, "type": self.type, "choices": self.choices}
        group.add_argument(
            self.name, help=self.help, **{k: v for k, v in options.items() if v is not None}
        )

    def value(self, given: Any) -> Any:
        """The field's value for what the command line gave (a comma list read as numbers)."""
        if self.comma_list is None:
            return given
        return comma_numbers(given, self.name, self.comma_list)


class StudyKind(ABC, Generic[ConfigT, PlanT]):
    """One kind of study: how its runs are planned, fingerprinted, executed, summarised, offered.

    A kind is a subclass that sets the class attributes below and the methods :meth:`plan`
    (unless the default fits), :meth:`fingerprint`, :meth:`execute` and :meth:`summarise`;
    :func:`minsharp.study.core.runner.run_study` does everything else the same way for every
    kind, and ``minsharp study <name>`` is built from what the kind declares
    (:mod:`minsharp.cli.study`).

    Attributes:
        name: the kind, as ``study.json`` records it and ``minsharp study <name>`` runs it.
        run_plan: the class of its runs' plans (a :class:`RunPlan` with the kind's axis), for
            the default :meth:`plan`.
        presets: the kind's presets (:class:`~minsharp.study.core.config.Presets`).
        measured_on: what the measures are computed on, in words (``study.json``).
        result_numbers: keys a complete result holds as finite numbers.
        axis: the configuration field the kind's grid varies besides seeds and models.
        measure_groups: keys of a result holding ``{measure: entry}`` dictionaries, each entry
            with a ``value`` or an ``error``.
        grid_training: training settings the grid decides (no ``--batch-size`` flag where the
            grid sets the batch size).
        flags: the override flags of the kind's own fields.
        help: the one line ``minsharp study --help`` shows.
        description: the ``minsharp study <name> --help`` text.
        epilog: its examples (by default, its ``cpu`` preset on MNIST files).
        paper_note: what the ``paper`` preset asks of a CPU, printed when run on one.
        directory_stem: the study directory without ``--output`` is ``<stem>-<preset>``.
    """

    name: ClassVar[str]
    run_plan: ClassVar[type[Any]]
    presets: ClassVar[Presets[Any]]
    measured_on: ClassVar[str]
    result_numbers: ClassVar[tuple[str, ...]]
    axis: ClassVar[str]
    measure_groups: ClassVar[tuple[str, ...]] = ("measures",)
    grid_training: ClassVar[tuple[str, ...]] = ()
    flags: ClassVar[tuple[Flag, ...]] = ()
    help: ClassVar[str]
    description: ClassVar[str]
    paper_note: ClassVar[str]
    directory_stem: ClassVar[str] = ""

    @property
    def epilog(self) -> str:
        """The examples of ``minsharp study <name> --help`` (default: its ``cpu`` preset, MNIST)."""
        return (
            f"example:\n  minsharp study {self.name} --preset cpu --data-dir ~/mnist "
            f"--output runs/{self.name}"
        )

    def plan_runs(self, config: ConfigT) -> list[PlanT]:
        """The runs of ``config``'s grid: for each seed, each model, each value of :attr:`axis`.

        Seed by seed, so that a study stopped half-way holds complete sweeps (and matched
        pairs) for its first seeds, which the report can already compare.
        """
        return [
            self.plan(config, model, seed, value)
            for seed in config.seeds
            for model in config.models
            for value in getattr(config, self.axis)
        ]

    def plan(self, config: ConfigT, model: ModelPlan, seed: int, value: Any) -> PlanT:
        """The run of ``model`` from ``seed`` at ``value`` of the kind's axis.

        By default, for a kind whose axis is a training setting (the batch size, the penalty
        weight): a :attr:`run_plan` of the training ``config.training_config(model, seed,
        value)``, with ``value`` as its last field.
        """
        training = config.training_config(model, seed, value)  # type: ignore[call-arg]
        return self.run_plan(model, seed, training, value)

    @abstractmethod
    def fingerprint(self, config: ConfigT, plan: PlanT) -> str:
        """SHA-256 of every setting that decides the run's result.

        A stored result is reused only when its fingerprint is this one
        (:func:`~minsharp.study.core.steps.run_fingerprint` with the kind's own settings).
        """

    @abstractmethod
    def execute(self, config: ConfigT, plan: PlanT, run: RunContext) -> None:
        """Run ``plan`` on ``run.data`` and fill ``run.record`` (:class:`RunContext`).

        An exception marks the run failed, with what the record holds by then; the record is
        written by :func:`~minsharp.study.core.runner.execute_run`.
        """

    @abstractmethod
    def summarise(self, result: Mapping[str, Any]) -> str:
        """One line about a complete run (:meth:`summary` says the failed ones)."""

    @property
    def preset(self) -> Presets[Any]:
        """Its presets: ``preset(name)`` builds one (the name :attr:`presets` had before)."""
        return self.presets

    def default_directory(self, preset_name: str) -> str:
        """The study directory when ``--output`` is not given: ``./<stem>-<preset>``."""
        return f"{self.directory_stem or 'minsharp-' + self.name}-{preset_name}"

    def stored_config(self, content: Mapping[str, Any]) -> ConfigT:
        """The configuration stored as ``content`` (``study.json``'s ``config``)."""
        return self.presets.stored(content)

    def summary(self, result: Mapping[str, Any]) -> str:
        """One line about a run's result, complete (:meth:`summarise`) or failed."""
        if result.get("status") != "complete":
            return f"{result['run_id']}: FAILED ({result.get('error')}: {result.get('message')})"
        return self.summarise(result)
