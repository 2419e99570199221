"""The numerical solvers behind the measures, one problem per module.

* :mod:`.exp_sum` — Minimum Sharpness: minimise a sum of exponentials of linear forms
  (Newton on its logarithm, an exact test for unattained infima);
* :mod:`.normalized` — normalized sharpness: the per-layer convex problem (Newton–CG);
* :mod:`.lanczos` — the largest eigenvalue of a symmetric operator from products.
"""

from minsharp.solvers.exp_sum import ExpSumMinimum, minimize_exp_sum
from minsharp.solvers.lanczos import Eigenpair, largest_eigenvalue
from minsharp.solvers.normalized import (
    NORMALIZED_OBJECTIVES,
    NormalizedSharpnessSolution,
    minimize_normalized_sharpness,
)

__all__ = [
    "NORMALIZED_OBJECTIVES",
    "Eigenpair",
    "ExpSumMinimum",
    "NormalizedSharpnessSolution",
    "largest_eigenvalue",
    "minimize_exp_sum",
    "minimize_normalized_sharpness",
]
