"""minsharp: scale-invariant sharpness of neural-network minima.

The exact curvature engine (:func:`hessian_diagonal`, :func:`hessian_trace`), the layer-wise
rescaling symmetry (:func:`rescale`), Minimum Sharpness (:func:`minimum_sharpness`), and every
sharpness measure by name through :func:`measure` (:func:`available` lists them).
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
from minsharp.io import package_version
from minsharp.measures import MeasureResult, MinimumSharpness, available, measure, minimum_sharpness
from minsharp.symmetry.layerwise import chain_layers, rescale

#: The version of minsharp, from the installed package's metadata
#: (:func:`minsharp.io.package_version`).
__version__ = package_version()

__all__ = [
    "CurvatureDiagonal",
    "CurvatureTrace",
    "DataError",
    "MeasureResult",
    "MinimumSharpness",
    "MinsharpError",
    "ModelError",
    "NotAChainError",
    "NotPiecewiseLinearError",
    "UnsupportedModuleError",
    "available",
    "brute_force_ggn_diagonal",
    "brute_force_hessian_diagonal",
    "chain_layers",
    "hessian_diagonal",
    "hessian_trace",
    "measure",
    "minimum_sharpness",
    "rescale",
]
