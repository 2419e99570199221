"""The largest eigenvalue of a symmetric operator known only through products with vectors.

The full-Hessian measures (top eigenvalue, quotient-manifold flatness, theory §4) need
``λ_max``: :func:`largest_eigenvalue` runs Lanczos with full reorthogonalisation and certifies
its answer by a measured residual.

At the stopping residual ``‖A y − ρ y‖ ≤ tolerance · |ρ|`` of :func:`largest_eigenvalue`,
some eigenvalue lies within the residual of ``ρ`` (within ``residual² / gap`` given a
spectral gap). That it is the *largest* one rests on Lanczos finding the extreme
eigenvalues first from a random start, which has a component along every eigenvector; the
residual alone cannot rule out a larger eigenvalue whose eigenvector the start barely
touches (a second ``seed`` confirms). This is the largest *algebraic* eigenvalue: for an
indefinite operator (a Hessian away from a minimum) a more negative eigenvalue of larger
magnitude is ignored. ``ρ ≤ λ_max`` always (up to rounding), so a non-converged answer is a
lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from minsharp.errors import ModelError
from minsharp.options import integer, number

EIGEN_TOLERANCE = 1e-6
#: Default largest number of Lanczos steps (matrix-vector products) of :func:`largest_eigenvalue`.
EIGEN_MAX_ITERATIONS = 100
#: A Lanczos step whose new direction has norm below this (relative to ‖T‖) found an invariant
#: subspace: the Ritz values are then exact eigenvalues up to rounding.
_BREAKDOWN = 1e-12


@dataclass(frozen=True)
class Eigenpair:
    """Result of :func:`largest_eigenvalue`."""

    value: float
    """The Rayleigh quotient ``vᵀ A v`` of ``vector``: the largest eigenvalue when converged,
    and never above it in any case (a lower bound on ``λ_max`` when not converged)."""
    vector: Tensor
    """The unit Ritz vector, float64, on the device of the operator."""
    residual: float
    """``‖A v − value · v‖``, measured with one extra product, not estimated."""
    matvecs: int
    """Products with ``A`` computed, the final check included."""
    converged: bool
    """Whether ``residual ≤ tolerance · |value|`` (or the Krylov space became invariant)."""


def largest_eigenvalue(
    matvec: Callable[[Tensor], Tensor],
    dimension: int,
    *,
    tolerance: float = EIGEN_TOLERANCE,
    max_iterations: int = EIGEN_MAX_ITERATIONS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Eigenpair:
    """Largest algebraic eigenvalue of a symmetric operator, by Lanczos.

    Lanczos with full reorthogonalisation (classical Gram–Schmidt applied twice against every
    stored basis vector) from a seeded Gaussian start vector. After step ``k`` the tridiagonal
    ``T_k = V_kᵀ A V_k`` gives the Ritz pair ``(θ, y = V_k s)`` of its largest eigenvalue and
    the residual estimate ``‖A y − θ y‖ = β_k |s_k|``. Once the estimate passes, one more
    product measures the true residual of the Rayleigh quotient ``ρ = yᵀ A y``, and the
    iteration stops when

        ``‖A y − ρ y‖ ≤ tolerance · |ρ|``.

    Why this is the largest eigenvalue, and what a non-converged answer means, is in the module
    docstring. Memory: ``(steps + 1) · dimension`` float64 numbers for the basis.

    Args:
        matvec: ``v ↦ A v`` on float64 vectors of length ``dimension``; ``A`` must be symmetric.
        dimension: length of the vectors.
        tolerance: relative residual to reach, in (0, 1).
        max_iterations: largest number of Lanczos steps, at least 1. If the tolerance is not
            reached by then, the best Ritz pair is returned with ``converged=False`` (no error:
            the caller decides; the measures warn).
        seed: seed of the start vector.
        device: where the vectors live (default: CPU).

    Returns:
        The Ritz pair with its measured residual and the number of products used.

    Example:
        A diagonal operator whose eigenvalue of largest magnitude is negative:

        >>> diagonal = torch.tensor([-5.0, 1.0, 2.0, 3.0], dtype=torch.float64)
        >>> pair = largest_eigenvalue(lambda v: diagonal * v, 4)
        >>> round(pair.value, 12), pair.converged, pair.matvecs <= 5
        (3.0, True, True)
    """
    _check_eigen_options(dimension, tolerance, max_iterations, seed)
    lanczos = _Lanczos(matvec, dimension, seed, device, max_iterations)
    failed_checks, next_check = 0, 0
    for step in range(max_iterations):
        residual_vector, beta = lanczos.expand(step)
        theta, ritz, invariant = lanczos.top_ritz_pair(step, beta)
        last = step + 1 == max_iterations
        passed = beta * abs(ritz[-1]) <= tolerance * abs(theta) and step >= next_check
        if invariant or last or passed:
            best = lanczos.verified(ritz, invariant, tolerance)
            if best.converged or last:
                return best
            # The true residual sits on a rounding floor (float32 products) that the estimate
            # does not see: space the next checks out geometrically, 2, 4, 8… steps apart.
            failed_checks += 1
            next_check = step + 2**failed_checks
        lanczos.accept(residual_vector, beta)
    raise AssertionError("unreachable: the last step always returns")


class _Lanczos:
    """Lanczos state: the basis ``V_k``, the tridiagonal ``T_k`` and the products made."""

    def __init__(
        self,
        matvec: Callable[[Tensor], Tensor],
        dimension: int,
        seed: int,
        device: torch.device | str | None,
        max_iterations: int,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(dimension, generator=generator, dtype=torch.float64).to(device)
        self.matvec, self.dimension = matvec, dimension
        self.basis = _Basis(start / start.norm(), max_iterations + 1)
        self.diagonal: list[float] = []
        self.off_diagonal: list[float] = []
        self.matvecs = 0

    def expand(self, step: int) -> tuple[Tensor, float]:
        """Step ``k``: ``α_k = v_kᵀ A v_k`` onto T's diagonal; the new direction and ``β_k``."""
        current = self.basis.last()
        product = _checked_product(self.matvec, current, self.dimension)
        self.matvecs += 1
        alpha = float(current @ product)
        residual_vector = product - alpha * current
        if self.off_diagonal:
            residual_vector -= self.off_diagonal[-1] * self.basis.vector(step - 1)
        residual_vector = self.basis.orthogonalise(residual_vector)
        self.diagonal.append(alpha)
        return residual_vector, float(residual_vector.norm())

    def top_ritz_pair(self, step: int, beta: float) -> tuple[float, np.ndarray, bool]:
        """``(θ, s)`` of ``T_k``'s largest eigenvalue, and whether the Krylov space is invariant."""
        theta, ritz = _top_ritz_pair(self.diagonal, self.off_diagonal)
        scale = max(abs(t) for t in (*self.diagonal, *self.off_diagonal, beta)) or 1.0
        return theta, ritz, beta <= _BREAKDOWN * scale or step + 1 == self.dimension

    def verified(self, ritz: np.ndarray, invariant: bool, tolerance: float) -> Eigenpair:
        """The Ritz pair ``y = V_k s`` with its residual measured by one more product."""
        pair = _verified_pair(self.matvec, self.basis.combine(ritz), self.dimension)
        self.matvecs += 1
        converged = invariant or pair[2] <= tolerance * abs(pair[0])
        return Eigenpair(*pair, matvecs=self.matvecs, converged=converged)

    def accept(self, residual_vector: Tensor, beta: float) -> None:
        """Append ``β_k`` to T and ``v_{k+1} = r / β_k`` to the basis."""
        self.off_diagonal.append(beta)
        self.basis.append(residual_vector / beta)


def _check_eigen_options(dimension: int, tolerance: float, max_iterations: int, seed: int) -> None:
    integer("dimension", dimension, minimum=1)
    number("tolerance", tolerance, above=0, below=1, why="the relative residual ‖Av − λv‖/|λ|")
    integer("max_iterations", max_iterations, minimum=1, why="Lanczos steps")
    integer("seed", seed)


def _checked_product(matvec: Callable[[Tensor], Tensor], vector: Tensor, dimension: int) -> Tensor:
    product = matvec(vector)
    if product.shape != (dimension,):
        raise ValueError(f"matvec returned shape {tuple(product.shape)}; expected ({dimension},).")
    product = product.to(torch.float64)
    if not bool(torch.isfinite(product).all()):
        raise ModelError(
            "a matrix-vector product came out non-finite (NaN or inf): the loss overflows "
            "at these parameters. Check the weights and the data scale."
        )
    return product


def _top_ritz_pair(diagonal: list[float], off_diagonal: list[float]) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of the symmetric tridiagonal ``T`` and its unit eigenvector."""
    k = len(diagonal)
    values, vectors = eigh_tridiagonal(
        np.array(diagonal), np.array(off_diagonal[: k - 1]), select="i", select_range=(k - 1, k - 1)
    )
    return float(values[0]), vectors[:, 0]


def _verified_pair(
    matvec: Callable[[Tensor], Tensor], vector: Tensor, dimension: int
) -> tuple[float, Tensor, float]:
    """``(ρ, v, ‖A v − ρ v‖)`` for the unit vector along ``vector``, ``ρ = vᵀ A v``."""
    vector = vector / vector.norm()
    product = _checked_product(matvec, vector, dimension)
    value = float(vector @ product)
    return value, vector, float((product - value * vector).norm())


class _Basis:
    """The orthonormal Lanczos vectors, as rows of a buffer that doubles when full."""

    def __init__(self, first: Tensor, capacity: int) -> None:
        self._capacity = capacity
        self._rows = first.new_empty((min(capacity, 8), first.numel()))
        self._rows[0] = first
        self._size = 1

    def last(self) -> Tensor:
        return self._rows[self._size - 1]

    def vector(self, index: int) -> Tensor:
        return self._rows[index]

    def append(self, vector: Tensor) -> None:
        if self._size == self._rows.shape[0]:
            grown = self._rows.new_empty((min(2 * self._size, self._capacity), vector.numel()))
            grown[: self._size] = self._rows
            self._rows = grown
        self._rows[self._size] = vector
        self._size += 1

    def orthogonalise(self, vector: Tensor) -> Tensor:
        """``vector`` minus its projection on the basis, by classical Gram–Schmidt.

        A second pass only when the first removed more than ``1 − 1/√2`` of the norm: the
        Daniel–Gragg–Kaufman–Stewart criterion, under which the second pass restores
        orthogonality to working precision ("twice is enough").
        """
        rows = self._rows[: self._size]
        before = vector.norm()
        vector = vector - rows.T @ (rows @ vector)
        if vector.norm() < before / math.sqrt(2):
            vector = vector - rows.T @ (rows @ vector)
        return vector

    def combine(self, coefficients: np.ndarray) -> Tensor:
        """``Σ_j coefficients[j] · basis[j]``."""
        rows = self._rows[: len(coefficients)]
        return torch.as_tensor(coefficients, dtype=rows.dtype, device=rows.device) @ rows
