"""Per-layer curvature from input patches and back-propagated output cotangents.

Every supported layer is, per example ``n`` and group ``g``, a matrix product
``y[c, s] = Σ_p W[c, p] · U[p, s] (+ b[c])``: a Linear layer has one position per leading
index, a convolution one per output pixel, with ``U`` the unfolded input patches.

Index letters, used in every name and einsum of ``minsharp.curvature``:

====  ==========================================================
K     cotangents pushed back per example (one per class)
N     examples in the batch
G     groups (convolutions with ``groups > 1``; 1 otherwise)
C     output units per group
P     inputs per output unit (patch size: C_in / G · kernel volume)
S     positions sharing the weights (sequence steps, output pixels)
====  ==========================================================

The engine folds the class weights into the cotangents (``√p_nk (e_k − p_n)``, see
``minsharp.curvature.engine``), so every quantity below is a plain sum of squares over
``(k, n)`` of the per-cotangent gradients ``g_kn(W) = δ_kn U_nᵀ`` (MATH §1):

* weight diagonal  ``Σ_kn (δ_kn U_nᵀ)^⊙2``
* weight trace     ``Σ_kn ‖δ_kn U_nᵀ‖²``, either in *Gram form*
  ``⟨Σ_k δ_knᵀ δ_kn, U_nᵀ U_n⟩`` (cost ∝ S²(K·C + P)) or in *direct form* by materialising
  ``δ_kn U_nᵀ`` (cost ∝ K·C·P·S), whichever is cheaper; with S = 1 the Gram form is the
  rank-one shortcut ``‖δ_kn‖²‖U_n‖²``.
* bias diagonal    ``Σ_kn (Σ_s δ_kn[:, s])^⊙2``
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

#: Largest intermediate of the direct form, in elements; the batch is split to stay below it.
DIRECT_FORM_ELEMENTS = 1 << 24


def capture_patches(patches: Tensor, source: Tensor, *, diagonal: bool) -> Tensor:
    """Keep what the weight rules need from the patches ``U`` (N, G, P, S) of one call.

    With a single position only squares are needed, so they are formed at once (squared
    entries for the diagonal, squared norms for the trace). Otherwise ``U`` itself is kept,
    copied if it still shares memory with the layer input, which later in-place code may
    overwrite.
    """
    if patches.shape[-1] == 1:
        if diagonal:
            return patches.square()
        return torch.linalg.vector_norm(patches, dim=2, keepdim=True).square()
    if patches.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return patches.clone()
    return patches


def layer_sums(
    captured: Tensor,
    rows: Tensor,
    *,
    weight: bool,
    bias: bool,
    diagonal: bool,
    overwrite: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """Weight and bias sums of squares of one layer call (None where not asked for).

    ``captured`` comes from :func:`capture_patches`, ``rows`` are the cotangents ``δ``
    (K, N, G, C, S). With ``diagonal`` the weight sum is (G, C, P) and the bias sum (G, C);
    otherwise both are scalars (traces). ``overwrite`` lets ``rows`` be used as scratch
    space, saving the largest temporary.
    """
    if rows.shape[-1] == 1:
        single = rows[..., 0]
        squares = single.square_() if overwrite else single.square()
        return _single_position_sums(captured, squares, weight, bias, diagonal)
    weight_sum = None
    if weight:
        weight_sum = (_direct_diagonal if diagonal else _weight_trace)(captured, rows)
    bias_sum = None
    if bias:
        bias_sum = rows.sum(-1).square().sum((0, 1))
        bias_sum = bias_sum if diagonal else bias_sum.sum()
    return weight_sum, bias_sum


def _single_position_sums(
    captured: Tensor, squares: Tensor, weight: bool, bias: bool, diagonal: bool
) -> tuple[Tensor | None, Tensor | None]:
    """S = 1: both sums factor through ``Σ_k δ_kn²`` (N, G, C), one pass over the squares."""
    per_unit = squares.sum(0)
    weight_sum = None
    if weight:
        if diagonal:
            weight_sum = torch.einsum("ngc,ngp->gcp", per_unit, captured[..., 0])
        else:
            weight_sum = (per_unit.sum(2) * captured[:, :, 0, 0]).sum()
    bias_sum = None
    if bias:
        bias_sum = per_unit.sum(0) if diagonal else per_unit.sum()
    return weight_sum, bias_sum


def _weight_trace(captured: Tensor, rows: Tensor) -> Tensor:
    """``Σ_kn ‖δ_kn U_nᵀ‖²`` in the Gram or the direct form, whichever costs less."""
    K, _, _, C, S = rows.shape
    P = captured.shape[2]
    if S * (K * C + P) < K * C * P:
        cotangent_gram = torch.einsum("kngcs,kngct->ngst", rows, rows)
        patch_gram = torch.einsum("ngps,ngpt->ngst", captured, captured)
        return (cotangent_gram * patch_gram).sum()
    return sum(
        (gradients.square().sum() for gradients in _per_cotangent_gradients(captured, rows)),
        start=rows.new_zeros(()),
    )


def _direct_diagonal(captured: Tensor, rows: Tensor) -> Tensor:
    """``Σ_kn (δ_kn U_nᵀ)^⊙2`` as a (G, C, P) tensor, by materialising ``δ_kn U_nᵀ``."""
    G, C = rows.shape[2:4]
    total = rows.new_zeros(G, C, captured.shape[2])
    for gradients in _per_cotangent_gradients(captured, rows):
        total += gradients.square().sum((0, 1))
    return total


def _per_cotangent_gradients(captured: Tensor, rows: Tensor) -> Iterator[Tensor]:
    """``δ_kn U_nᵀ`` (K, n, G, C, P) for slices of the batch small enough to hold in memory."""
    K, N, G, C = rows.shape[:4]
    P = captured.shape[2]
    step = max(1, DIRECT_FORM_ELEMENTS // (K * G * C * P))
    for start in range(0, N, step):
        yield torch.einsum(
            "kngcs,ngps->kngcp", rows[:, start : start + step], captured[start : start + step]
        )
