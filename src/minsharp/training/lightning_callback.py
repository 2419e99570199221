"""A PyTorch Lightning callback tracking exact sharpness during training (optional extra).

``pip install "minsharp[lightning]"`` brings Lightning. :class:`SharpnessCallback` measures
the trained network every n optimiser steps on a fixed probe set with a
:class:`~minsharp.training.tracking.SharpnessTracker` and sends the values to every logger of
the trainer (``sharpness/<measure>``), and optionally to a CSV file of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from minsharp.errors import MinsharpError
from minsharp.training.tracking import SharpnessTracker

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

    The values are those of ``tracker``, a
    :class:`~minsharp.training.tracking.SharpnessTracker` (by default the exact Hessian trace,
    theory §1, and Minimum Sharpness, theory §2, Ibayashi, Hamaguchi & Imaizumi 2021, on its
    fixed probe data), taken after each optimiser step whose ``trainer.global_step`` is a
    multiple of the tracker's ``every``.

    Args:
        tracker: what to measure, on which probe, how often, and where to write rows.
        network: picks the network to measure out of the LightningModule (default: the
            module itself, whose ``forward`` must return logits).
    """

    def __init__(
        self,
        tracker: SharpnessTracker,
        *,
        network: Callable[[LightningModule], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(tracker, SharpnessTracker):
            raise MinsharpError(
                "SharpnessCallback takes a SharpnessTracker (what to measure, how often); got "
                f"a {type(tracker).__name__}. Build one: SharpnessTracker(probe, every=100)."
            )
        self.tracker = tracker
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
