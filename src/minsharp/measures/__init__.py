"""Sharpness measures behind one interface.

Every measure is a row of the table :data:`minsharp.measures.table.MEASURES` and a public
function of this package returning one :class:`MeasureResult`; :func:`measure` computes one
by its registered name and :func:`available` lists the names. The function of the registry
name ``hessian_trace`` is :func:`exact_hessian_trace`, because ``minsharp.hessian_trace`` is
the curvature engine's (returning per-parameter traces, a ``CurvatureTrace``).
"""

from minsharp.measures.registry import (
    SYMMETRIES,
    MeasureSpec,
    available,
    check_model_requirements,
    has_batchnorm,
    measure,
    measure_function,
    register,
    spec,
)
from minsharp.measures.result import Evaluation, MeasureResult
from minsharp.solvers.chain import ScaleSolution, solve_scales

adaptive_sharpness = measure_function("adaptive_sharpness")
adaptive_sharpness_average = measure_function("adaptive_sharpness_average")
bn_sharpness = measure_function("bn_sharpness")
epsilon_sharpness = measure_function("epsilon_sharpness")
exact_hessian_trace = measure_function("hessian_trace", "exact_hessian_trace")
fisher_rao = measure_function("fisher_rao")
hutchinson_trace = measure_function("hutchinson_trace")
minimum_sharpness = measure_function("minimum_sharpness")
neuron_minimum_sharpness = measure_function("neuron_minimum_sharpness")
normalized_sharpness = measure_function("normalized_sharpness")
normalized_sharpness_icml = measure_function("normalized_sharpness_icml")
pac_bayes_flatness = measure_function("pac_bayes_flatness")
quotient_flatness = measure_function("quotient_flatness")
relative_flatness = measure_function("relative_flatness")
top_eigenvalue = measure_function("top_eigenvalue")

#: The former result type of :func:`minimum_sharpness`, now the one :class:`MeasureResult`.
MinimumSharpness = MeasureResult

__all__ = [
    "SYMMETRIES",
    "Evaluation",
    "MeasureResult",
    "MeasureSpec",
    "MinimumSharpness",
    "ScaleSolution",
    "adaptive_sharpness",
    "adaptive_sharpness_average",
    "available",
    "bn_sharpness",
    "check_model_requirements",
    "epsilon_sharpness",
    "exact_hessian_trace",
    "fisher_rao",
    "has_batchnorm",
    "hutchinson_trace",
    "measure",
    "measure_function",
    "minimum_sharpness",
    "neuron_minimum_sharpness",
    "normalized_sharpness",
    "normalized_sharpness_icml",
    "pac_bayes_flatness",
    "quotient_flatness",
    "register",
    "relative_flatness",
    "solve_scales",
    "spec",
    "top_eigenvalue",
]
