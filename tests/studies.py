"""Shared pieces of the study tests: tiny configurations, a training spy, the command round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from minsharp.cli.main import main
from minsharp.study.core import runner as base
from minsharp.study.core import steps
from minsharp.study.core.kind import StudyKind

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: The data of every tiny study: 120 training and 60 test digits.
TINY_DATA: dict[str, Any] = {
    "preset": "demo",
    "dataset": "digits",
    "train_size": 120,
    "test_size": 60,
    "data_seed": 0,
}

#: The same data on the command line, with one seed, an MLP 64-8-10 and one thread.
TINY_FLAGS = [
    "--train-size",
    "120",
    "--test-size",
    "60",
    "--seeds",
    "0",
    "--hidden",
    "8",
    "--threads",
    "1",
    "--no-progress",
]


#: The sections every study report ends with.
CLOSING_SECTIONS = (
    "## What was run",
    "## How this run differs from the paper",
    "## Machine and versions",
    "## Files",
)


def assert_sections(text: str, *headings: str) -> None:
    """``text`` holds every heading of ``headings`` and of :data:`CLOSING_SECTIONS`."""
    for heading in (*headings, *CLOSING_SECTIONS):
        assert heading in text


def tiny(config_type, changes: dict[str, Any], **fields):
    """A ``config_type`` on :data:`TINY_DATA` with ``fields``, then with ``changes`` applied."""
    config = config_type(**TINY_DATA, **fields)
    return dataclasses.replace(config, **changes) if changes else config


def quiet(line: str) -> None:
    """Swallow a study's progress lines."""


def finished_study(tmp_path_factory, kind: StudyKind, config) -> Path:
    """A study of ``kind`` run to the end with ``config`` in a new directory (module fixtures)."""
    directory = tmp_path_factory.mktemp(kind.name)
    base.run_study(kind, config, directory, echo=quiet)
    return directory


class TrainingSpy:
    """Replaces ``train_classifier`` of the study steps (every kind trains there), records calls.

    Keeps each call's training config and the network's weights before training; with
    ``fail_at``, that call raises ``error`` instead of training.
    """

    def __init__(self, monkeypatch, *, fail_at: int | None = None, error=KeyboardInterrupt):
        self.configs: list = []
        self.states: list[dict] = []
        self.fail_at = fail_at
        self.error = error
        self.original = steps.train_classifier
        monkeypatch.setattr(steps, "train_classifier", self)

    def __call__(self, model, inputs, labels, config, **options):
        self.configs.append(config)
        self.states.append({k: v.clone() for k, v in model.state_dict().items()})
        if self.fail_at is not None and len(self.configs) == self.fail_at:
            raise self.error("stopped here")
        return self.original(model, inputs, labels, config, **options)

    @property
    def seeds(self) -> list[int]:
        """The seed of each call's training."""
        return [config.seed for config in self.configs]


def command_round_trip(capsys, command: list[str], report: list[str]) -> tuple[str, str]:
    """Run a two-run study ``command`` twice, then ``report``; what the first and the report print.

    The first run trains both runs, the second reuses them, the report exits 0.
    """
    assert main(command) == 0
    first = capsys.readouterr().out
    assert "2 runs trained, 0 reused" in first
    assert main(command) == 0
    assert "0 runs trained, 2 reused" in capsys.readouterr().out
    assert main(report) == 0
    return first, capsys.readouterr().out
