"""minsharp: scale-invariant sharpness of neural-network minima.

The exact curvature engine (:func:`hessian_diagonal`, :func:`hessian_trace`), the layer-wise
rescaling symmetry (:func:`rescale`) and Minimum Sharpness (:func:`minimum_sharpness`).
"""

from minsharp.curvature import (
    CurvatureDiagonal,
    CurvatureTrace,
    brute_force_ggn_diagonal,
    brute_force_hessian_diagonal,
    hessian_diagonal,
    hessian_trace,
)
from minsharp.errors import (
    DataError,
    MinsharpError,
    ModelError,
    NotAChainError,
    NotPiecewiseLinearError,
    UnsupportedModuleError,
)
from minsharp.measures import MinimumSharpness, minimum_sharpness
from minsharp.symmetry import chain_layers, rescale

__all__ = [
    "CurvatureDiagonal",
    "CurvatureTrace",
    "DataError",
    "MinimumSharpness",
    "MinsharpError",
    "ModelError",
    "NotAChainError",
    "NotPiecewiseLinearError",
    "UnsupportedModuleError",
    "brute_force_ggn_diagonal",
    "brute_force_hessian_diagonal",
    "chain_layers",
    "hessian_diagonal",
    "hessian_trace",
    "minimum_sharpness",
    "rescale",
]
