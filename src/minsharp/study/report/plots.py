"""The figure helpers every study report uses: matplotlib figures without pyplot, PNG files.

Figures are made with :func:`new_figure` (constrained layout) and written by
:func:`save_figure` through matplotlib's Agg canvas, so that a report needs no display and
leaves pyplot's global state alone; :func:`log_scale_if_wide` puts wide positive values on a
log scale, and :data:`MARKERS` gives each model its marker.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minsharp.io import write_bytes_atomic

#: Marker per model, in order.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


#: Values spanning at least this factor (all positive) are drawn on a log scale.
LOG_SPAN = 10.0


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of this size in inches, with constrained layout (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, path: Path) -> Path:
    """Render ``figure`` on an Agg canvas to PNG (110 dpi) and write it to ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def log_scale_if_wide(axis: Any, values: Sequence[float]) -> None:
    """Put ``axis``'s y scale on a log scale when the finite values span :data:`LOG_SPAN`."""
    finite = [value for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= LOG_SPAN:
        axis.set_yscale("log")
