"""Perturbation-based sharpness: how much the loss rises when the parameters are moved.

Four baselines over all trainable parameters θ, on the mean cross-entropy ``L`` over the
whole data (theory §0), each needing the labels:

* ``epsilon_sharpness`` — Keskar et al. 2017: the worst loss in the box
  ``|ε_i| ≤ ε (|θ_i| + 1)``, in percent of ``1 + L(θ)``;
* ``adaptive_sharpness`` — Kwon et al. 2021, Andriushchenko et al. 2023: the worst loss
  rise over ``‖ε ⊘ |θ|‖_p ≤ ρ``;
* ``adaptive_sharpness_average`` — the same neighbourhood's average rise under Gaussian
  noise ``ε = |θ| ⊙ η``, ``η ~ N(0, ρ² I)``;
* ``pac_bayes_flatness`` (in :mod:`minsharp.measures.pac_bayes`) — Jiang et al. 2020 after
  Dziugaite & Roy 2017: ``1/σ²`` for the largest Gaussian noise level σ that the error rate
  (or loss) tolerates.

The two worst cases share one solver, :func:`worst_case_perturbation`: with a per-coordinate
scale ``s`` both constraint sets read ``ε = s ⊙ η``, ``‖η‖_p ≤ r`` (Keskar: ``s = |θ| + 1``,
``p = ∞``, ``r = ε``; adaptive: ``s = |θ|``, ``r = ρ``), and projected steepest ascent runs
in the normalised coordinates η. The Monte-Carlo measures share one noise source: draw ``j``
is a standard normal tensor per trainable parameter, taken in ``named_parameters`` order from
one CPU ``torch.Generator`` seeded with ``seed``, draw after draw
(:class:`StandardNormalDraws`). The same ``seed`` gives the same draws on every call, for every
noise level and for any rescaled copy of the network (common random numbers).

``adaptive_sharpness`` is solved by projected steepest ascent on η
(:func:`worst_case_perturbation`, ``s = |θ|``): sign-gradient steps for ℓ∞,
normalised-gradient steps for ℓ2, cosine-decaying from one radius, best iterate kept.
Defaults follow Andriushchenko et al.'s study, which centred on adaptive ℓ∞ worst-case
sharpness with 20 ascent steps: ``norm="inf"``, ``ρ = 0.002`` (their CIFAR-10 ResNet grid
was 0.001–0.008), ``steps=20``; for ``norm="2"`` the default is ``ρ = 0.5`` (their grid
0.25–2). Differences from their code: one perturbation for the whole data (their m-sharpness
averaged the worst case over batches of m = 128), no logit normalisation, start at η = 0
instead of a random point, and a cosine step schedule instead of Auto-PGD's momentum and
step halving; their ℓ2 steps followed ``|θ| ⊙ ∇L / ‖∇L‖``, ours the steepest-ascent
direction of the ball in η.

To second order, the adaptive ℓ∞ value bounds :func:`adaptive_sharpness_average` at the same ρ
from above: the box's corners are the Rademacher vectors, whose average loss rise matches
the Gaussian one (same covariance ρ² I, zero mean).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp.curvature import budget
from minsharp.errors import MinsharpError
from minsharp.measures.result import Evaluation
from minsharp.objective import DatasetObjective, Parameters, unflatten
from minsharp.options import choice, integer, number
from minsharp.tensors import standard_error

Norm = Literal["inf", "2"]

#: Default ρ of ``adaptive_sharpness`` per norm (Andriushchenko et al. 2023's grids for
#: adaptive worst-case sharpness of CIFAR-10 ResNets: ℓ∞ 0.001–0.008, ℓ2 0.25–2).
ADAPTIVE_RHO: dict[str, float] = {"inf": 0.002, "2": 0.5}


@dataclass(frozen=True)
class WorstCase:
    """Result of :func:`worst_case_perturbation`: the best perturbation found, and how."""

    loss: float
    """``L(θ)``, the unperturbed loss."""
    perturbed_loss: float
    """``L(θ + ε)`` at the returned perturbation: the largest loss met along the ascent."""
    perturbation: Parameters
    """``ε = s ⊙ η`` by parameter name (zeros when no step raised the loss)."""
    norm: Norm
    radius: float
    steps: int
    """Ascent steps taken (each costs one gradient over the data; one more evaluates the end)."""
    best_step: int
    """Index of the returned iterate (0 = unperturbed, ``steps`` = last)."""
    frank_wolfe_gap: float
    """``max_{‖v‖_p ≤ r} ⟨g, v − η⟩ = r ‖g‖_q − ⟨g, η⟩`` at the returned iterate, ``g`` the
    gradient in the normalised coordinates and ``q`` the dual exponent: the loss a linearised
    model still promises inside the set; 0 exactly at a first-order stationary point."""
    gradient_dual_norm: float
    """``‖g‖_q`` at the returned iterate, so ``gap / (r ‖g‖_q)`` ∈ [0, 2] is scale-free."""
    on_boundary: float
    """ℓ∞: fraction of the movable coordinates (``s_i > 0``) at ``|η_i| = r``; ℓ2: ``‖η‖₂ / r``."""

    @property
    def rise(self) -> float:
        """``L(θ + ε) − L(θ)`` (≥ 0)."""
        return self.perturbed_loss - self.loss

    @property
    def certificate(self) -> dict[str, Any]:
        """The ascent's stopping record, for :class:`~minsharp.measures.Evaluation`."""
        scale = self.radius * self.gradient_dual_norm
        return {
            "method": f"projected steepest ascent on the ℓ{_SYMBOL[self.norm]} ball in η = ε ⊘ s",
            "steps": self.steps,
            "best_step": self.best_step,
            "frank_wolfe_gap": self.frank_wolfe_gap,
            "relative_frank_wolfe_gap": self.frank_wolfe_gap / scale if scale > 0 else 0.0,
            "gradient_dual_norm": self.gradient_dual_norm,
            "on_boundary": self.on_boundary,
        }


_SYMBOL = {"inf": "∞", "2": "2"}


def worst_case_perturbation(
    objective: DatasetObjective,
    scale: Mapping[str, Tensor],
    *,
    radius: float,
    norm: Norm = "inf",
    steps: int = 20,
    step_size: float = 1.0,
    progress: bool = False,
) -> WorstCase:
    """Maximise ``L(θ + s ⊙ η)`` over ``‖η‖_p ≤ radius`` by projected steepest ascent.

    From ``η = 0``, step ``k = 0..steps−1`` moves along the steepest-ascent direction of the
    ball's norm for the gradient ``g = s ⊙ ∇L(θ + s ⊙ η)`` in η — ``sign(g)`` for ``p = ∞``,
    ``g / ‖g‖₂`` for ``p = 2`` — by ``α_k = step_size · radius · (1 + cos(π k / steps)) / 2``
    and projects back onto the ball (clipping, or radial scaling). The first step with
    ``step_size = 1`` lands on the maximiser of the linearised loss (the corner
    ``radius · sign(g)`` of the box, or the point ``radius · g / ‖g‖₂`` of the sphere); the
    cosine-decaying steps then refine it. Every iterate is evaluated and the one with the
    largest loss returned (so ``perturbed_loss ≥ loss``).

    Because iterates live in η, the ascent is equivariant under elementwise rescalings: with
    ``s = |θ|``, a reparametrisation ``θ → D θ`` (D diagonal, positive) that preserves the
    function gives the same η sequence, hence the same losses, up to rounding.

    Args:
        objective: the loss over the data, at the model's parameters θ.
        scale: ``s``, non-negative tensors shaped like every parameter of ``objective``.
        radius: ``r > 0``.
        norm: ``"inf"`` or ``"2"``.
        steps: ascent steps (``steps + 1`` gradient evaluations over the data).
        step_size: the first step's length relative to ``radius``.
        progress: show a progress bar over the steps.
    """
    norm = _checked_norm(norm)
    number("radius", radius, above=0)
    _check_ascent(steps, step_size)
    missing = set(objective.parameters) - set(scale)
    if missing:
        raise MinsharpError(f"scale has no entry for the parameters {sorted(missing)}.")
    scale = {name: scale[name].to(p) for name, p in objective.parameters.items()}
    eta = {name: torch.zeros_like(p) for name, p in objective.parameters.items()}
    # The best iterate: its step, loss, η and gradient in η (its record is made at the end).
    best_step, loss, best_loss, best_eta, best_g = 0, math.nan, math.nan, eta, eta
    for k in tqdm(range(steps + 1), disable=not progress, desc="ascent", unit="step"):
        current, gradient = objective.gradient(objective.perturbed(elementwise_product(scale, eta)))
        g = elementwise_product(scale, gradient)
        if k == 0:
            loss = current
        if k == 0 or current > best_loss:
            best_step, best_loss, best_eta, best_g = k, current, eta, g
        if k < steps:
            length = step_size * radius * (1 + math.cos(math.pi * k / steps)) / 2
            direction = _steepest(g, norm)
            eta = _project({n: eta[n] + length * direction[n] for n in eta}, norm, radius)
    dual = _dual_norm(best_g, norm)
    return WorstCase(
        loss=loss,
        perturbed_loss=best_loss,
        perturbation=elementwise_product(scale, best_eta),
        norm=norm,
        radius=radius,
        steps=steps,
        best_step=best_step,
        frank_wolfe_gap=radius * dual - _inner(best_g, best_eta),
        gradient_dual_norm=dual,
        on_boundary=_boundary(best_eta, scale, norm, radius),
    )


def epsilon_sharpness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    epsilon: float = 1e-3,
    steps: int = 20,
    step_size: float = 1.0,
) -> Evaluation:
    """ε-sharpness ``φ = 100 · (max_{ε ∈ C} L(θ + ε) − L(θ)) / (1 + L(θ))``.

    Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017, "On large-batch training for deep
    learning: generalization gap and sharp minima" (their metric in the full space, ``A = I``),
    with the box ``C = {ε : |ε_i| ≤ ε (|θ_i| + 1)}`` over every trainable parameter; they used
    ``ε = 1e-3`` and ``5e-4``. Not invariant to any rescaling: the box's ``+1`` breaks it.

    Keskar et al. solved the inner maximisation approximately with L-BFGS-B; here it is
    projected sign-gradient ascent in the box's normalised coordinates
    (:func:`worst_case_perturbation` with ``s = |θ| + 1``, ``p = ∞``, ``r = ε``): the first
    step goes to the linearised maximiser ``ε (|θ| + 1) ⊙ sign(∇L)``, later steps refine it,
    and the best iterate is kept. In the paper's small boxes the loss is nearly linear: on the
    small random networks of ``tests/test_perturbation.py``, at ε = 1e-3 and 5e-4, 20 steps
    reach at least the maximum of L-BFGS-B run to convergence from ε = 0, less 0.5 % of the
    loss rise (the two methods stop at different local maxima). Larger boxes are less
    concave, and different local maxima can then differ more.

    Args:
        model: classifier in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: progress bar over the ascent steps.
        epsilon: ``ε > 0``, the box's relative half-width.
        steps: ascent steps, each one gradient over the data.
        step_size: first step's length as a fraction of the box half-width (then cosine decay).

    Returns:
        The value φ (percent); ``details`` hold ``loss``, ``perturbed_loss`` and ``epsilon``;
        ``certificate`` the ascent's record (steps, best step, Frank–Wolfe gap — the loss a
        linearised model still promises inside the box — and the fraction of coordinates on
        the box's faces).
    """
    number("epsilon", epsilon, above=0)
    return _worst_case_evaluation(
        model,
        data,
        batch_size,
        progress,
        offset=1,
        radius=epsilon,
        norm="inf",
        steps=steps,
        step_size=step_size,
        value=lambda found: 100 * found.rise / (1 + found.loss),
        details={"epsilon": epsilon},
    )


def adaptive_sharpness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    norm: Norm = "inf",
    rho: float | None = None,
    steps: int = 20,
    step_size: float = 1.0,
) -> Evaluation:
    """Adaptive worst-case sharpness ``max_{‖ε ⊘ |θ|‖_p ≤ ρ} L(θ + ε) − L(θ)``.

    Kwon, Kim, Park & Choi 2021, "ASAM: adaptive sharpness-aware minimization for
    scale-invariant learning of deep neural networks"; Andriushchenko, Croce, Müller, Hein &
    Flammarion 2023, "A modern look at the relationship between sharpness and
    generalization". The neighbourhood scales with each parameter's magnitude, so in the
    normalised coordinates ``η = ε / |θ|`` (``ε = |θ| ⊙ η``) the problem is the same for every
    elementwise rescaling of θ that preserves the function: the measure is invariant to layer,
    neuron and batch-norm rescalings. Parameters equal to zero are not perturbed.

    The solver, its defaults and how they differ from Andriushchenko et al.'s are in the
    module docstring.

    Args:
        model: classifier in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: progress bar over the ascent steps.
        norm: ``"inf"`` (ℓ∞ ball, a box) or ``"2"``.
        rho: radius ``ρ > 0`` in the normalised coordinates; None for the norm's default
            (:data:`ADAPTIVE_RHO`), which :func:`~minsharp.measures.measure` then records.
        steps: ascent steps, each one gradient over the data.
        step_size: first step's length as a fraction of ρ (then cosine decay).

    Returns:
        The loss rise; ``details`` hold ``loss``, ``perturbed_loss``, ``rho`` and ``norm``;
        ``certificate`` the ascent's record (see :class:`WorstCase`).

    Example:
        Invariant to a layer rescaling that leaves the function unchanged:

        >>> import torch
        >>> from minsharp.measures import measure
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
        ... ).double()
        >>> data = torch.randn(16, 3, dtype=torch.float64), torch.randint(2, (16,))
        >>> before = measure("adaptive_sharpness", net, data).value
        >>> with torch.no_grad():
        ...     _ = net[0].weight.mul_(3), net[0].bias.mul_(3), net[2].weight.div_(3)
        >>> after = measure("adaptive_sharpness", net, data).value
        >>> before > 0 and abs(after - before) < 1e-9 * before
        True
    """
    return _adaptive_worst_case(model, data, batch_size, progress, norm, rho, steps, step_size)


def _adaptive_worst_case(
    model: nn.Module,
    data: Any,
    batch_size: int | None,
    progress: bool,
    norm: Norm,
    rho: float | None,
    steps: int,
    step_size: float,
) -> Evaluation:
    """:func:`adaptive_sharpness` once its options are read: ``s = |θ|``, radius ``ρ``.

    ``rho=None`` resolves to the norm's default :data:`ADAPTIVE_RHO`, recorded in ``resolved``.
    """
    norm = _checked_norm(norm)
    rho = number("rho", ADAPTIVE_RHO[norm] if rho is None else rho, above=0)
    evaluation = _worst_case_evaluation(
        model,
        data,
        batch_size,
        progress,
        offset=0,
        radius=rho,
        norm=norm,
        steps=steps,
        step_size=step_size,
        value=lambda found: found.rise,
        details={"rho": rho, "norm": norm},
    )
    return dataclasses.replace(evaluation, resolved={**evaluation.resolved, "rho": rho})


def _worst_case_evaluation(
    model: nn.Module,
    data: Any,
    batch_size: int | None,
    progress: bool,
    *,
    offset: float,
    radius: float,
    norm: Norm,
    steps: int,
    step_size: float,
    value: Callable[[WorstCase], float],
    details: dict[str, Any],
) -> Evaluation:
    """A worst-case measure: :func:`worst_case_perturbation` with ``s = |θ| + offset``.

    The ascent options are checked before the data is read. The result holds ``value(found)``,
    the ascent's certificate, and the two losses followed by ``details``.
    """
    _check_ascent(steps, step_size)
    objective = DatasetObjective(model, data, batch_size)
    scale = {name: p.abs() + offset for name, p in objective.parameters.items()}
    found = worst_case_perturbation(
        objective,
        scale,
        radius=radius,
        norm=norm,
        steps=steps,
        step_size=step_size,
        progress=progress,
    )
    return Evaluation(
        value=value(found),
        num_examples=objective.num_examples,
        certificate=found.certificate,
        details={"loss": found.loss, "perturbed_loss": found.perturbed_loss, **details},
        resolved={"batch_size": objective.batch_size},
    )


def adaptive_sharpness_average(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
    rho: float = 0.1,
    samples: int = 50,
) -> Evaluation:
    """Adaptive average-case sharpness ``E_{η ~ N(0, ρ² I)} L(θ + |θ| ⊙ η) − L(θ)``.

    Andriushchenko, Croce, Müller, Hein & Flammarion 2023, "A modern look at the relationship
    between sharpness and generalization" (their adaptive average-case definition; the
    adaptive neighbourhood is Kwon et al. 2021's). Estimated over ``samples`` antithetic pairs
    ``±z_j`` of Gaussian draws (the module's common-random-number recipe, from ``seed``),
    unbiased, the pair cancelling the first-order term (:func:`_antithetic_losses`). The
    noise is relative to each parameter's magnitude, so with the same draws the estimate is
    exactly invariant — not only in expectation — to layer, neuron and batch-norm rescalings.
    Default ``ρ = 0.1``, inside their CIFAR-10 grid (0.05–0.4); they used 20 draws per batch
    of 128 examples, we use 50 pairs (100 perturbed losses) over the whole data. Costs two
    forward passes over the data per pair.

    Args:
        model: classifier in eval mode.
        data: ``(X, y)`` or an iterable of ``(X, y)`` batches.
        batch_size: examples per forward pass; None: the whole data within the memory
            budget (:class:`~minsharp.objective.DatasetObjective`).
        progress: progress bar over the pairs.
        seed: seed of the noise.
        rho: relative noise level ``ρ > 0``.
        samples: antithetic pairs S, at least 2.

    Returns:
        The mean loss rise; ``details`` hold ``standard_error`` (of the mean over the pairs'
        averages), ``loss``, ``mean_perturbed_loss``, ``rho`` and ``samples``.
    """
    number("rho", rho, above=0)
    integer("samples", samples, minimum=2, why="antithetic pairs; the standard error needs two")
    integer("seed", seed)
    objective = DatasetObjective(model, data, batch_size)
    loss = objective.loss()
    losses = _antithetic_losses(
        objective, StandardNormalDraws(objective.parameters, seed, samples), rho, progress
    )
    mean = float(losses.mean())
    return Evaluation(
        value=mean - loss,
        num_examples=objective.num_examples,
        details={
            "standard_error": standard_error(losses),
            "loss": loss,
            "mean_perturbed_loss": mean,
            "rho": rho,
            "samples": samples,
        },
        resolved={"batch_size": objective.batch_size},
    )


def _antithetic_losses(
    objective: DatasetObjective, draws: StandardNormalDraws, rho: float, progress: bool
) -> Tensor:
    """``(L(θ + ρ|θ| ⊙ z) + L(θ − ρ|θ| ⊙ z)) / 2`` for each draw z, in float64.

    Their mean less ``L(θ)`` estimates the adaptive average-case sharpness without bias,
    ``−z`` being distributed as ``z``; the pair cancels the first-order term
    ``ρ ∇Lᵀ(|θ| ⊙ z)``, which dominates the spread of single draws at small ρ.
    """
    magnitude = {name: p.abs() for name, p in objective.parameters.items()}
    pairs = []
    for z in tqdm(draws, disable=not progress, desc="adaptive noise", unit="pair"):
        direction = elementwise_product(magnitude, z)
        plus = objective.loss(objective.perturbed(direction, rho))
        minus = objective.loss(objective.perturbed(direction, -rho))
        pairs.append((plus + minus) / 2)
    return torch.tensor(pairs, dtype=torch.float64)


class StandardNormalDraws:
    """``samples`` standard normal tensors shaped like ``parameters``, the same on every pass.

    The module's common random numbers: one CPU generator seeded with ``seed`` draws each
    sample as one float32 vector over all parameters in order (float32 normals cost a fifth of
    float64 ones on CPU), split and cast to each parameter's dtype and device, so the same seed
    gives the same noise for float32 and float64 models, on any device. Iterating again gives
    the same draws: kept from the first pass when ``keep`` and they fit
    :data:`~minsharp.curvature.budget.MEMORY_BUDGET` (PAC-Bayes reuses them for every σ),
    drawn anew otherwise.
    """

    def __init__(
        self, parameters: Mapping[str, Tensor], seed: int, samples: int, *, keep: bool = False
    ) -> None:
        self.parameters, self.seed, self.samples = parameters, seed, samples
        size = sum(p.numel() * p.element_size() for p in parameters.values())
        self._kept: list[Parameters] | None = (
            [] if keep and samples * size <= budget.MEMORY_BUDGET else None
        )

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[Parameters]:
        if self._kept is not None and len(self._kept) == self.samples:
            yield from self._kept
            return
        if self._kept is not None:
            self._kept.clear()  # a pass stopped early kept only some: draw them all again
        generator = torch.Generator().manual_seed(self.seed)
        total = sum(p.numel() for p in self.parameters.values())
        for _ in range(self.samples):
            draw = unflatten(
                torch.randn(total, generator=generator, dtype=torch.float32), self.parameters
            )
            if self._kept is not None:
                self._kept.append(draw)
            yield draw


def elementwise_product(scale: Mapping[str, Tensor], tensors: Mapping[str, Tensor]) -> Parameters:
    """``scale ⊙ tensors``, parameter by parameter."""
    return {name: scale[name] * t for name, t in tensors.items()}


def _inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum((a[name].double() * b[name].double()).sum() for name in a))


def _dual_norm(g: Mapping[str, Tensor], norm: Norm) -> float:
    """``‖g‖_q`` with ``1/p + 1/q = 1``: ℓ1 for the ℓ∞ ball, ℓ2 for the ℓ2 ball."""
    if norm == "inf":
        return float(sum(t.double().abs().sum() for t in g.values()))
    return math.sqrt(float(sum(t.double().square().sum() for t in g.values())))


def _steepest(g: Mapping[str, Tensor], norm: Norm) -> Parameters:
    """The unit vector of the ball's norm maximising ``⟨g, d⟩`` (0 where g = 0)."""
    if norm == "inf":
        return {name: t.sign() for name, t in g.items()}
    length = _dual_norm(g, "2")
    return {name: t / length if length > 0 else torch.zeros_like(t) for name, t in g.items()}


def _project(eta: Mapping[str, Tensor], norm: Norm, radius: float) -> Parameters:
    """Euclidean projection onto ``‖η‖_p ≤ radius``."""
    if norm == "inf":
        return {name: t.clamp(-radius, radius) for name, t in eta.items()}
    length = _dual_norm(eta, "2")
    shrink = radius / length if length > radius else 1.0
    return {name: t * shrink for name, t in eta.items()}


def _boundary(
    eta: Mapping[str, Tensor], scale: Mapping[str, Tensor], norm: Norm, radius: float
) -> float:
    if norm == "2":
        return _dual_norm(eta, "2") / radius
    movable = sum(int((s > 0).sum()) for s in scale.values())
    if movable == 0:
        return 0.0
    edge = radius * (1 - 1e-9)
    faces = sum(int(((t.abs() >= edge) & (scale[n] > 0)).sum()) for n, t in eta.items())
    return faces / movable


def _check_ascent(steps: object, step_size: object) -> None:
    integer("steps", steps, minimum=1)
    number("step_size", step_size, above=0)


def _checked_norm(norm: object) -> Norm:
    """``"inf"`` or ``"2"``; also accepts the numbers ``math.inf`` and ``2``."""
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        norm = {math.inf: "inf", 2: "2"}.get(norm, norm)
    return choice("norm", norm, ("inf", "2"), why="ℓ∞ or ℓ2 ball")
