"""Sharpness during training: exact measures every n steps on a fixed probe set, logged to CSV.

A :class:`SharpnessTracker` is called once per optimiser step from a plain training loop
(:meth:`SharpnessTracker.after_step`); every ``every`` steps it computes the chosen measures
(by default the exact Hessian trace, theory §1, and Minimum Sharpness, theory §2) of the model
on the same probe examples, so the values of one run are comparable along its training. The
model is measured in eval mode and handed back in the mode it was in. Each row goes to
:attr:`SharpnessTracker.rows` and, with ``csv_path``, is appended to a CSV file in one write
followed by ``fsync``: a run killed mid-training keeps every row measured before, and a
resumed run appends to the same file (after checking its columns). The PyTorch Lightning
callback :class:`minsharp.training.lightning_callback.SharpnessCallback` wraps this class.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from minsharp.errors import MinsharpError
from minsharp.measures import measure, spec
from minsharp.options import integer, nn_module

#: What the tracker measures unless told otherwise.
DEFAULT_MEASURES = ("hessian_trace", "minimum_sharpness")


class SharpnessTracker:
    """Exact sharpness measures of a network every ``every`` optimiser steps.

    Each measure is :func:`minsharp.measure` on the fixed ``probe`` data, e.g. the exact
    ``Tr H = Σ_P Tr H_PP`` (theory §1) and Minimum Sharpness
    ``min_α Tr H(T_α θ)`` (Ibayashi, Hamaguchi & Imaizumi 2021; theory §2).

    Args:
        probe: the examples measured at every step: a tensor X, a tuple (X, y), or an
            iterable of such batches. Keep it fixed (and small: its cost is what a
            measurement costs).
        every: measure when ``step % every == 0``.
        measures: names of registered measures (``minsharp.available()``).
        options: per measure, its keyword options (``{"minimum_sharpness": {...}}``).
        csv_path: a CSV file to append one row per measurement to (created with a header
            if absent; an existing file must have the same columns).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> tracker = SharpnessTracker(torch.randn(16, 4), every=10, measures=["hessian_trace"])
        >>> tracker.after_step(net, 5) is None, sorted(tracker.after_step(net, 10))
        (True, ['hessian_trace', 'hessian_trace_seconds', 'step'])

    Raises:
        MinsharpError: an unknown measure or option, ``every`` not a positive integer, or a
            CSV file whose columns are not this tracker's.
    """

    def __init__(
        self,
        probe: Any,
        *,
        every: int = 100,
        measures: Sequence[str] = DEFAULT_MEASURES,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        csv_path: str | Path | None = None,
    ) -> None:
        integer("every", every, minimum=1)
        if isinstance(measures, str) or not measures:
            raise MinsharpError(
                f"measures must be a non-empty sequence of measure names; got {measures!r}."
            )
        for name in measures:
            spec(name)  # unknown names fail here, with suggestions
        options = dict(options or {})
        stray = sorted(set(options) - set(measures))
        if stray:
            raise MinsharpError(
                f"options are given for {stray}, which are not among the tracked measures "
                f"{list(measures)}; add them to measures or drop their options."
            )
        for name, chosen in options.items():
            unknown = sorted(set(chosen) - set(spec(name).defaults))
            if unknown:
                raise MinsharpError(
                    f"measure {name!r} has no option {unknown}; its options are "
                    f"{sorted(spec(name).defaults)}."
                )
        self.probe = probe
        self.every = every
        self.measures = tuple(measures)
        self.options = {name: dict(options.get(name, {})) for name in self.measures}
        self.columns = ["step", *self.measures, *(f"{name}_seconds" for name in self.measures)]
        self.rows: list[dict[str, float]] = []
        self.csv_path = None if csv_path is None else Path(csv_path).expanduser()
        if self.csv_path is not None:
            self._prepare_csv(self.csv_path)

    def due(self, step: int) -> bool:
        """Whether ``step`` is one the tracker measures at."""
        return step % self.every == 0

    def after_step(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Measure ``model`` if ``step`` is due; the row measured, else ``None``.

        Call it after the optimiser's step with the number of steps taken so far. The model
        is measured in eval mode and returned to its mode afterwards.
        """
        integer("step", step, minimum=0)
        if not self.due(step):
            return None
        return self.measure_now(model, step)

    def measure_now(self, model: nn.Module, step: int) -> dict[str, float]:
        """Measure ``model`` now, whatever the step; the row (also appended to the CSV)."""
        nn_module("model", model)
        was_training = model.training
        model.eval()
        row: dict[str, float] = {"step": step}
        try:
            for name in self.measures:
                result = measure(name, model, self.probe, **self.options[name])
                row[name] = result.value
                row[f"{name}_seconds"] = result.seconds
        finally:
            model.train(was_training)
        self.rows.append(row)
        if self.csv_path is not None:
            self._append(row)
        return row

    def _prepare_csv(self, path: Path) -> None:
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line(path, self.columns)
            return
        with path.open(newline="", encoding="utf-8") as stream:
            header = next(csv.reader(stream), [])
        if header != self.columns:
            raise MinsharpError(
                f"{path} holds the columns {header}, not this tracker's {self.columns}; give "
                "another csv_path, or track the same measures to resume that file."
            )

    def _append(self, row: Mapping[str, float]) -> None:
        assert self.csv_path is not None
        self._write_line(self.csv_path, [_cell(row[column]) for column in self.columns])

    @staticmethod
    def _write_line(path: Path, cells: Sequence[Any]) -> None:
        """One CSV line in one ``write`` then ``fsync``, so a kill leaves whole rows only."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, buffer.getvalue().encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _cell(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value)) if math.isfinite(value) else str(value)
