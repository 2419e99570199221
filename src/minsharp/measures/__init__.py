"""Sharpness measures behind one interface: :func:`measure` by name, :func:`available` lists.

Importing this package registers every measure; each module holds one measure family.
"""

from minsharp.measures import bn_sharpness as bn_sharpness
from minsharp.measures import curvature_baselines as curvature_baselines
from minsharp.measures import fisher_rao as fisher_rao
from minsharp.measures import normalized_sharpness as normalized_sharpness
from minsharp.measures import perturbation as perturbation
from minsharp.measures import quotient_flatness as quotient_flatness
from minsharp.measures import relative_flatness as relative_flatness
from minsharp.measures.minimum_sharpness import (
    MinimumSharpness,
    ScaleSolution,
    minimum_sharpness,
    solve_scales,
)
from minsharp.measures.registry import (
    SYMMETRIES,
    Evaluation,
    MeasureResult,
    MeasureSpec,
    available,
    measure,
    register,
    spec,
)

__all__ = [
    "SYMMETRIES",
    "Evaluation",
    "MeasureResult",
    "MeasureSpec",
    "MinimumSharpness",
    "ScaleSolution",
    "available",
    "measure",
    "minimum_sharpness",
    "register",
    "solve_scales",
    "spec",
]
