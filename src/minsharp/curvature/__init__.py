"""The exact curvature engine: Hessian diagonals and traces of piecewise-linear networks."""

from minsharp.curvature.engine import hessian_diagonal, hessian_trace
from minsharp.curvature.reference import brute_force_ggn_diagonal, brute_force_hessian_diagonal
from minsharp.curvature.results import CurvatureDiagonal, CurvatureTrace

__all__ = [
    "CurvatureDiagonal",
    "CurvatureTrace",
    "brute_force_ggn_diagonal",
    "brute_force_hessian_diagonal",
    "hessian_diagonal",
    "hessian_trace",
]
