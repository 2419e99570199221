"""Plain (not rescaling-invariant) curvature measures, the baselines of every comparison.

All refer to the Hessian ``H = ∇²L`` of the mean cross-entropy over the data (theory §0):
its exact trace (per-layer formula), Hutchinson's stochastic estimate of the trace, and its
largest eigenvalue. The last two use products with the full Hessian over the whole data set
(:class:`minsharp.objective.DatasetObjective`), so they need the labels; so does
:func:`hessian_top_eigenvalue`, the Lanczos plumbing shared with ``quotient_flatness``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp.curvature.engine import hessian_trace
from minsharp.curvature.results import Curvature
from minsharp.measures.result import Evaluation
from minsharp.objective import DatasetObjective, Parameters, flatten, unflatten
from minsharp.options import integer
from minsharp.solvers.lanczos import EIGEN_MAX_ITERATIONS, EIGEN_TOLERANCE, largest_eigenvalue
from minsharp.tensors import standard_error


def exact_hessian_trace(
    model: nn.Module,
    data: Any,
    *,
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """``Tr H = Σ_P Tr H_PP``, exact for piecewise-linear networks (theory §1).

    The trace of the full Hessian is the sum of the traces of its diagonal blocks, which the
    curvature engine computes exactly in one pass (:func:`minsharp.hessian_trace`; its
    ``batch_size=None`` picks the batch from the memory budget). ``curvature="ggn"`` gives
    the generalized Gauss–Newton trace ``Tr G`` instead, for any network; ``details`` say
    which.
    """
    traces = hessian_trace(
        model, data, curvature=curvature, batch_size=batch_size, progress=progress
    )
    return Evaluation(
        value=traces.total,
        num_examples=traces.num_examples,
        per_layer=_by_module(traces.by_parameter),
        details={"curvature": traces.curvature},
        resolved={"batch_size": traces.batch_size},
    )


def top_eigenvalue(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    tolerance: float = EIGEN_TOLERANCE,
    max_iterations: int = EIGEN_MAX_ITERATIONS,
    seed: int = 0,
) -> Evaluation:
    """``λ_max(H)``, the largest eigenvalue of the full Hessian ``H = ∇²L`` (theory §0).

    The classic sharpness of a minimum (Keskar et al. 2017), which a layer rescaling changes
    at will without changing the function (Dinh et al. 2017): ``H → T⁻¹ H T⁻¹``. It is the
    largest *algebraic* eigenvalue: away from a minimum ``H`` may be indefinite, and a negative
    eigenvalue of larger magnitude is ignored. ``H`` includes every off-diagonal block, which
    depends on the labels; products ``H v`` are exact over all of ``data`` (double backward,
    float64 sums over batches).

    Lanczos (:func:`minsharp.solvers.lanczos.largest_eigenvalue`) stops when the Ritz pair
    ``(λ, v)`` has ``‖H v − λ v‖ ≤ tolerance · |λ|``; the certificate holds that residual, the
    number of Hessian-vector products (each one pass over the data) and ``converged``. A run
    that hits ``max_iterations`` first warns and returns a lower bound on ``λ_max``. With a float32
    model the products carry rounding near ``1e-7 · ‖H‖``, so tolerances much below ``1e-6``
    may be out of reach. ``details`` gives ``direction_share``: the share ``‖v_l‖²`` of each
    layer in the top eigenvector.

    Args:
        model: the classifier, in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: show a progress bar over Hessian-vector products.
        tolerance: relative Ritz residual to reach, in (0, 1).
        max_iterations: largest number of Lanczos steps (Hessian-vector products).
        seed: seed of the Lanczos start vector.
    """
    objective = DatasetObjective(model, data, batch_size)
    return hessian_top_eigenvalue(
        objective,
        scales=None,
        tolerance=tolerance,
        max_iterations=max_iterations,
        seed=seed,
        progress=progress,
    )


def hessian_top_eigenvalue(
    objective: DatasetObjective,
    *,
    scales: Tensor | None,
    tolerance: float,
    max_iterations: int,
    seed: int,
    progress: bool,
) -> Evaluation:
    """``λ_max(D H D)`` over the flattened parameters, ``D = diag(scales)`` (identity if None).

    The Hessian-vector plumbing shared by ``top_eigenvalue`` and ``quotient_flatness``: flat
    float64 vectors in the parameters' order, scaled by ``D`` on both sides of each product
    with the full Hessian of ``objective``. Warns (``RuntimeWarning``) when Lanczos stops at
    ``max_iterations`` before reaching ``tolerance``.

    Args:
        objective: the loss over the whole data set.
        scales: the diagonal of ``D``, float64, as long as the flattened parameters.
        tolerance: relative residual of :func:`minsharp.solvers.lanczos.largest_eigenvalue`.
        max_iterations: its largest number of Lanczos steps.
        seed: seed of its start vector.
        progress: show a progress bar over Hessian-vector products.

    Returns:
        The eigenvalue, a certificate (``residual`` ``‖A v − λ v‖`` and ``relative_residual``
        ``/ |λ|``, ``matvecs``, ``tolerance``, ``converged``) and the top
        eigenvector's share per layer in ``details["direction_share"]``.
    """
    dimension = sum(p.numel() for p in objective.parameters.values())
    with (
        tqdm(
            total=max_iterations,
            disable=not progress,
            desc="Hessian-vector products",
            unit="matvec",
        ) as bar,
        objective.hessian_products() as hessian_times,
    ):

        def product(vector: Tensor) -> Tensor:
            if scales is not None:
                vector = scales * vector
            result = flatten(hessian_times(unflatten(vector, objective.parameters)))
            bar.update(1)
            return result if scales is None else scales * result

        pair = largest_eigenvalue(
            product,
            dimension,
            tolerance=tolerance,
            max_iterations=max_iterations,
            seed=seed,
            device=objective.device,
        )
        bar.total = bar.n  # stopped before max_iterations: show the bar complete
    if not pair.converged:
        warnings.warn(
            f"Lanczos stopped after max_iterations={max_iterations} steps with residual "
            f"‖Av − λv‖ = {pair.residual:.2e} > tolerance · |λ| (tolerance={tolerance}); the "
            f"value {pair.value:.6g} is a lower bound on the top eigenvalue. Raise "
            "max_iterations or the tolerance.",
            RuntimeWarning,
            stacklevel=3,
        )
    shares = unflatten(pair.vector.square(), objective.parameters)
    return Evaluation(
        value=pair.value,
        num_examples=objective.num_examples,
        certificate={
            "residual": pair.residual,
            "relative_residual": pair.residual / abs(pair.value) if pair.value else None,
            "matvecs": pair.matvecs,
            "tolerance": tolerance,
            "converged": pair.converged,
        },
        details={"direction_share": _by_module({n: float(s.sum()) for n, s in shares.items()})},
        resolved={"batch_size": objective.batch_size},
    )


def hutchinson_trace(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    samples: int = 100,
    seed: int = 0,
) -> Evaluation:
    """Hutchinson's estimate ``Tr H ≈ (1/S) Σ_s v_sᵀ H v_s``, ``v_s`` Rademacher (Hutchinson 1989).

    Unbiased for the trace of the full Hessian ``H = ∇²L`` (theory §0), with variance
    ``2 Σ_{i≠j} H_ij² / S`` (Avron & Toledo 2011); ``details["standard_error"]`` is the sample
    standard deviation of ``v_sᵀ H v_s`` over ``√S``. Each probe costs one Hessian-vector product
    over all of ``data`` (each batch's forward and gradient computed once for all probes,
    :meth:`~minsharp.objective.DatasetObjective.hessian_products`). ``per_layer`` splits every
    quadratic form by the layer of its entries:
    ``v_lᵀ (H v)_l`` has expectation ``Tr H_ll``, so the same probes estimate each layer's
    trace (standard errors in ``details["per_layer_standard_error"]``). The stochastic
    counterpart of the exact ``hessian_trace``, for networks that one does not cover (not
    piecewise linear in every parameter: it refuses them or gives the Gauss–Newton trace).

    Args:
        model: the classifier, in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: show a progress bar over the probes.
        samples: number S of probe vectors, at least 2.
        seed: seed of the probes.
    """
    integer("samples", samples, minimum=2, why="probe vectors; the standard error needs two")
    integer("seed", seed)
    objective = DatasetObjective(model, data, batch_size)
    generator = torch.Generator().manual_seed(seed)
    forms = torch.empty(samples, len(objective.parameters), dtype=torch.float64)
    with objective.hessian_products() as hessian_times:
        for sample in tqdm(
            range(samples), disable=not progress, desc="Hutchinson probes", unit="probe"
        ):
            probe = _rademacher(objective.parameters, generator)
            product = hessian_times(probe)
            for column, name in enumerate(objective.parameters):
                # In the product's own dtype: its rounding is already of that order, and a
                # float64 sum would first copy the whole product to float64.
                forms[sample, column] = float((probe[name] * product[name]).sum())
    per_module = _forms_by_module(forms, list(objective.parameters))
    totals = forms.sum(1)
    return Evaluation(
        value=float(totals.mean()),
        num_examples=objective.num_examples,
        per_layer={module: float(values.mean()) for module, values in per_module.items()},
        details={
            "standard_error": standard_error(totals),
            "per_layer_standard_error": {
                module: standard_error(values) for module, values in per_module.items()
            },
        },
        resolved={"batch_size": objective.batch_size},
    )


def _forms_by_module(forms: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Each module's share of the quadratic forms: the columns of its parameters, summed."""
    columns: dict[str, list[int]] = {}
    for column, name in enumerate(names):
        columns.setdefault(_module(name), []).append(column)
    return {module: forms[:, where].sum(1) for module, where in columns.items()}


def _module(parameter: str) -> str:
    """The module owning a parameter (``"(root)"`` for the model's own)."""
    return parameter.rpartition(".")[0] or "(root)"


def _by_module(values: dict[str, float]) -> dict[str, float]:
    """Per-parameter values summed per owning module, in the parameters' order."""
    modules: dict[str, float] = {}
    for name, value in values.items():
        modules[_module(name)] = modules.get(_module(name), 0.0) + value
    return modules


def _rademacher(parameters: Mapping[str, Tensor], generator: torch.Generator) -> Parameters:
    """A ±1 tensor per parameter: the bits of uniform random bytes, in parameter order.

    One draw of ``⌈P/8⌉`` bytes and a look-up of each byte's eight signs: a fifth of the time
    of drawing ``P`` coin flips one by one (torch's CPU sampler), the same for any dtype.
    """
    total = sum(p.numel() for p in parameters.values())
    random_bytes = torch.randint(256, ((total + 7) // 8,), generator=generator)
    signs = _BYTE_SIGNS.index_select(0, random_bytes).reshape(-1)[:total]
    return unflatten(signs, parameters)


#: Row b: the eight bits of the byte b as signs, bit 0 first (1 → +1, 0 → −1).
_BYTE_SIGNS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).float() * 2 - 1
