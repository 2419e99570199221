"""The rescaling stress test (``--stress rescale``): every measure on function-equivalent twins.

Dinh, Pascanu, Bengio & Bengio (2017) showed that a positively homogeneous network can be
rescaled into any sharpness a non-invariant measure can report without changing its
function. This module makes three twins of every trained network with the full rescaling
group G of its graph (:func:`minsharp.symmetry.graph.discover`, theory §7): a group element
with log-scales u multiplies the weight from unit j to unit i by ``e^{u_i − u_j}`` and bias i
by ``e^{u_i}``, which leaves the logits unchanged. Each twin is verified on a probe batch
(:func:`minsharp.symmetry.group.verify_same_function`, the first :data:`PROBE_EXAMPLES`
measured inputs) before every measure of the study is computed on it:

``random``
    ``u = u_layer + u_neuron``: ``u_layer`` one N(0, s²) log-scale per module output (the
    layer subgroup, :meth:`~minsharp.symmetry.graph.SymmetryGroup.tie_layers`), ``u_neuron``
    one N(0, s²) per unit of the untied group (:func:`~minsharp.symmetry.group.
    random_log_scales`), where the spread s itself is drawn uniformly in :data:`SPREAD_RANGE`
    per run, all from :func:`twin_seed` of the run id. A spread that differs from run to run
    is the point: one fixed distortion for every network keeps most of a ranking.
``minimised``
    The optimum of neuron-wise Minimum Sharpness,
    ``minimum_sharpness(model, data, symmetry="neuron").rescaled(model)``: the element of G
    with the least Hessian trace.
``raised``
    The same direction reversed and stretched to the bound: ``u = −(B / ‖u*‖_∞) u*``, u* the
    optimum's log-scales and B = :data:`RAISE_BOUND`, so every log-scale lies in ±B. Along
    the line t ↦ Tr H(g_{t u*}), a convex function that falls from t = 0 to t = 1, every
    t < 0 gives a trace at least the original's: the twin is sharper by the trace.

The report's *adversarial* twin of a run is ``minimised`` for the runs above the median
generalization gap and ``raised`` for the others (``stress_report``): the rescaling that
argues against the ranking, chosen among function-preserving ones only.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from minsharp.errors import MinsharpError
from minsharp.measures import MeasureResult, minimum_sharpness
from minsharp.study.core.steps import derive_seed, measure_all
from minsharp.symmetry.graph import SymmetryGroup, discover
from minsharp.symmetry.group import random_log_scales, rescaled_copy, verify_same_function

#: The twins every run gets, in the order they are made.
TWINS: tuple[str, ...] = ("random", "minimised", "raised")

#: The random twin's log-scale spread s is drawn uniformly in this range, once per run.
SPREAD_RANGE: tuple[float, float] = (0.0, 2.0)

#: Bound B on the raised twin's log-scales: every |u_i| ≤ B (a factor of at most e^{2B}
#: on a weight).
RAISE_BOUND = 2.0

#: Examples of the measured inputs on which each twin's logits are checked.
PROBE_EXAMPLES = 64


def stress_settings() -> dict[str, Any]:
    """What decides the twins of a run, for its fingerprint and its record."""
    return {
        "test": "rescale",
        "twins": list(TWINS),
        "spread_range": list(SPREAD_RANGE),
        "raise_bound": RAISE_BOUND,
        "probe_examples": PROBE_EXAMPLES,
    }


def twin_seed(run_id: str) -> int:
    """The seed of a run's random twin (its spread and log-scales)."""
    return derive_seed("stress", "rescale", run_id)


def random_twin_scales(group: SymmetryGroup, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The random twin's log-scales per unit id and its record (spread, seed, largest |u|).

    ``s ~ U(SPREAD_RANGE)``, then ``u = u_layer + u_neuron`` with both parts N(0, s²) (see
    the module docstring); ground and pinned units stay at 0, tied units share a scale.
    """
    generator = np.random.default_rng(seed)
    spread = float(generator.uniform(*SPREAD_RANGE))
    layers = copy.deepcopy(group)
    layers.tie_layers()
    first, second = (int(value) for value in generator.integers(0, 2**31, size=2))
    log_scales = random_log_scales(layers, first, spread) + random_log_scales(group, second, spread)
    return log_scales, {"spread": spread, "seed": seed, "max_abs_log_scale": _largest(log_scales)}


def optimum_log_scales(group: SymmetryGroup, scales: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Log-scales per unit id from Minimum Sharpness's ``details["scales"]`` (e^u per unit)."""
    log_scales = np.zeros(len(group.parent))
    for name, (first, count) in group.units.items():
        log_scales[first : first + count] = np.log(np.asarray(scales[name], dtype=np.float64))
    return log_scales


def raised_scales(optimum: np.ndarray, bound: float = RAISE_BOUND) -> tuple[np.ndarray, float]:
    """``−(bound / ‖u*‖_∞) u*`` and the stretch ``bound / ‖u*‖_∞`` (0 when u* = 0)."""
    largest = _largest(optimum)
    stretch = bound / largest if largest > 0 else 0.0
    return -stretch * optimum, stretch


def measure_twins(
    model: nn.Module,
    inputs: tuple[Tensor, Tensor],
    measures: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    run_id: str,
) -> dict[str, Any]:
    """Make the :data:`TWINS` of ``model``, verify each, and compute ``measures`` on it.

    Returns ``{"settings", "twins": {name: entry}, "seconds"}``; an entry holds how the
    twin was made, its ``function_deviation`` (relative logit gap on the probe) and
    ``measures`` (as :func:`~minsharp.study.core.steps.measure_all` records them), or
    ``error`` and ``message`` when the twin could not be made or verified (the run goes on).
    """
    started = time.perf_counter()
    probe = inputs[0][:PROBE_EXAMPLES]
    group = discover(model, probe)
    solved = functools.cache(lambda: minimum_sharpness(model, inputs, symmetry="neuron"))
    makers: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {
        "random": lambda: _random(model, group, run_id),
        "minimised": lambda: _minimised(model, solved()),
        "raised": lambda: _raised(model, solved(), group),
    }
    twins = {
        name: _measured(model, makers[name], probe, inputs, measures, options) for name in TWINS
    }
    return {
        "settings": stress_settings(),
        "twins": twins,
        "seconds": time.perf_counter() - started,
    }


def _measured(
    model: nn.Module,
    make: Callable[[], tuple[nn.Module, dict[str, Any]]],
    probe: Tensor,
    inputs: tuple[Tensor, Tensor],
    measures: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One twin made, verified on ``probe`` and measured; an error entry if it fails."""
    try:
        twin, record = make()
        record["function_deviation"] = verify_same_function(model, twin, probe)
    except Exception as error:  # recorded with the run; the other twins go on
        return {"error": type(error).__name__, "message": str(error) or type(error).__name__}
    record["measures"], record["measure_seconds"] = measure_all(twin, inputs, measures, options)
    return record


def _random(model: nn.Module, group: SymmetryGroup, run_id: str) -> tuple[nn.Module, dict]:
    log_scales, record = random_twin_scales(group, twin_seed(run_id))
    return rescaled_copy(model, group, log_scales), record


def _minimised(model: nn.Module, result: MeasureResult) -> tuple[nn.Module, dict]:
    twin = result.rescaled(model)
    return twin, {"trace_before": result.details["trace"], "trace_after": result.value}


def _raised(
    model: nn.Module, result: MeasureResult, group: SymmetryGroup
) -> tuple[nn.Module, dict]:
    scales = result.details.get("scales")
    if scales is None:
        raise MinsharpError(
            "no raised twin: neuron-wise Minimum Sharpness attains no optimum on this network "
            f"(runaway units: {result.details.get('runaway')})."
        )
    log_scales, stretch = raised_scales(optimum_log_scales(group, scales))
    record = {"bound": RAISE_BOUND, "stretch": stretch, "max_abs_log_scale": _largest(log_scales)}
    return rescaled_copy(model, group, log_scales), record


def _largest(log_scales: np.ndarray) -> float:
    return float(np.abs(log_scales).max()) if log_scales.size else 0.0
