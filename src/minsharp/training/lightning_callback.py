"""A PyTorch Lightning callback tracking exact sharpness during training (optional extra).

``pip install "minsharp[lightning]"`` brings Lightning. :class:`SharpnessCallback` measures
the trained network every ``every`` optimiser steps on a fixed probe set with a
:class:`~minsharp.training.tracking.SharpnessTracker` and sends the values to every logger of
the trainer (``sharpness/<measure>``), and optionally to a CSV file of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from minsharp.errors import MinsharpError
from minsharp.training.tracking import DEFAULT_MEASURES, SharpnessTracker

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as missing:  # the optional extra is not installed
    raise MinsharpError(
        "minsharp.training.lightning_callback needs PyTorch Lightning: "
        'pip install "minsharp[lightning]" (or pip install lightning).'
    ) from missing

#: Prefix of the metric names the callback logs.
METRIC_PREFIX = "sharpness/"


class SharpnessCallback(Callback):
    """Log exact sharpness measures every ``every`` optimiser steps of a Lightning run.

    The values are those of :class:`~minsharp.training.tracking.SharpnessTracker` (by
    default the exact Hessian trace, theory §1, and Minimum Sharpness, theory §2, Ibayashi,
    Hamaguchi & Imaizumi 2021) on the fixed ``probe`` data, taken after the optimiser step
    whose ``trainer.global_step`` is a multiple of ``every``.

    Args:
        probe: the examples measured each time (a tensor X, a tuple (X, y), or batches).
        every: measure when ``trainer.global_step % every == 0``.
        measures: names of registered measures.
        options: per measure, its keyword options.
        csv_path: also append each row to this CSV file.
        network: picks the network to measure out of the LightningModule (default: the
            module itself, whose ``forward`` must return logits).
    """

    def __init__(
        self,
        probe: Any,
        *,
        every: int = 100,
        measures: Sequence[str] = DEFAULT_MEASURES,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        csv_path: str | Path | None = None,
        network: Callable[[LightningModule], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.tracker = SharpnessTracker(
            probe, every=every, measures=measures, options=options, csv_path=csv_path
        )
        self.network = network

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Measure after the optimiser steps that are due, and log to every logger."""
        step = trainer.global_step
        if step == 0 or not self.tracker.due(step) or self._measured(step):
            return  # gradient accumulation repeats a global step: measure it once
        model = pl_module if self.network is None else self.network(pl_module)
        row = self.tracker.measure_now(model, step)
        metrics = {f"{METRIC_PREFIX}{name}": row[name] for name in self.tracker.measures}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _measured(self, step: int) -> bool:
        return bool(self.tracker.rows) and self.tracker.rows[-1]["step"] == step
