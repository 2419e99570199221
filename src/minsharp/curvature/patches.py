"""Per-layer curvature from input patches and back-propagated output cotangents.

Every supported layer is, per example ``n`` and group ``g``, a matrix product
``y[c, s] = Σ_p W[c, p] · U[p, s] (+ b[c])``: a Linear layer has one position per leading
index, a convolution one per output pixel, with ``U`` the unfolded input patches.

Index letters, used in every name and einsum of ``minsharp.curvature``:

====  ==========================================================
K     cotangents pushed back per example (one fewer than the classes)
N     examples in the batch
G     groups (convolutions with ``groups > 1``; 1 otherwise)
C     output units per group
P     inputs per output unit (patch size: C_in / G · kernel volume)
S     positions sharing the weights (sequence steps, output pixels)
====  ==========================================================

The engine folds the class probabilities into the cotangents (``√p_nk (e_k − q_n)``, see
``minsharp.curvature.cotangents``), so every quantity below is a plain sum of squares over
``(k, n)`` of the per-cotangent gradients ``g_kn(W) = δ_kn U_nᵀ`` (theory §1):

* weight diagonal  ``Σ_kn (δ_kn U_nᵀ)^⊙2``
* weight trace     ``Σ_kn ‖δ_kn U_nᵀ‖²``, either in *Gram form*
  ``⟨Σ_k δ_knᵀ δ_kn, U_nᵀ U_n⟩`` (cost ∝ S²(K·C + P)) or in *direct form* by materialising
  ``δ_kn U_nᵀ`` (cost ∝ K·C·P·S), whichever counts fewer operations; with S = 1 the Gram
  form is the rank-one shortcut ``‖δ_kn‖²‖U_n‖²``.
* bias diagonal    ``Σ_kn (Σ_s δ_kn[:, s])^⊙2``

The engine pushes the K cotangents back a few at a time, so :class:`LayerSums` accumulates
these sums over chunks of cotangents; whatever factors out of the sum over ``k`` (the squares
``Σ_k δ_kn²`` when S = 1, the cotangent Gram matrices) is summed first and combined with the
patches once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

#: Largest intermediate of the direct form, in elements; the batch is split to stay below it.
DIRECT_FORM_ELEMENTS = 1 << 24

#: Elements of the squared inputs formed at once from unsquared ones (see ``unsquared``): a
#: 2 MiB block in place of a copy of every input, at the same speed
#: (``benchmarks/results/engine_choices.md``: all at once took 0.99–1.01× the time).
SQUARES_ELEMENTS = 1 << 19


def capture_patches(
    patches: Tensor, source: Tensor, *, diagonal: bool, unsquared: bool = False
) -> Tensor:
    """Keep what the weight rules need from the patches ``U`` (N, G, P, S) of one call.

    With a single position only squares are needed, so they are formed at once (squared
    entries for the diagonal, squared norms for the trace), unless ``unsquared``: then the
    diagonal keeps ``U`` as it is, and :class:`LayerSums` squares it a block of examples at a
    time. Only a caller that knows nothing changes the layer's input after the call may ask
    for that. Otherwise ``U`` itself is kept, copied if it still shares memory with the layer
    input, which later in-place code may overwrite.
    """
    if patches.shape[-1] == 1:
        if diagonal and unsquared:
            return patches
        if diagonal:
            return patches * patches
        return torch.linalg.vector_norm(patches, dim=2, keepdim=True).square()
    if patches.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return patches.clone()
    return patches


class LayerSums:
    """Weight and bias sums of squares of one layer call, over chunks of its cotangents.

    Args:
        captured: the patches as :func:`capture_patches` keeps them.
        classes: K, the number of cotangents that will be added in all (it decides between
            the Gram and the direct form of the weight trace).
        weight, bias: which sums to form.
        diagonal: diagonals (weight (G, C, P), bias (G, C)) rather than traces (scalars).
        unsquared: ``captured`` holds the unsquared patches of a single-position layer's
            diagonal (``capture_patches(..., unsquared=True)``).
    """

    def __init__(
        self,
        captured: Tensor,
        *,
        classes: int,
        weight: bool,
        bias: bool,
        diagonal: bool,
        unsquared: bool = False,
    ) -> None:
        self.captured = captured
        self.unsquared = unsquared and diagonal and captured.shape[-1] == 1
        self.classes = classes
        self.weight = weight
        self.bias = bias
        self.diagonal = diagonal
        self._unit_squares: Tensor | None = None  # S = 1: Σ_k δ_kn² (N, G, C)
        self._cotangent_gram: Tensor | None = None  # Gram form: Σ_k δ_knᵀ δ_kn (N, G, S, S)
        self._weight_sum: Tensor | None = None  # direct form
        self._bias_sum: Tensor | None = None  # S > 1: Σ_kn (Σ_s δ_kn)² (G, C)

    @property
    def single_position(self) -> bool:
        """Whether the layer has one position (S = 1): all sums factor through ``Σ_k δ_kn²``."""
        return self.captured.shape[-1] == 1

    def add(self, rows: Tensor) -> None:
        """Add the cotangents ``δ`` (k, N, G, C, S) of k of the K − 1 cotangents."""
        if self.single_position:
            self._add_single_position(rows[..., 0])
            return
        if self.weight:
            if self.diagonal:
                self._weight_sum = _plus(self._weight_sum, _direct_diagonal(self.captured, rows))
            elif self._gram_is_cheaper(rows.shape[3]):
                gram = torch.einsum("kngcs,kngct->ngst", rows, rows)
                self._cotangent_gram = _plus(self._cotangent_gram, gram)
            else:
                self._weight_sum = _plus(self._weight_sum, _direct_trace(self.captured, rows))
        if self.bias:
            self._bias_sum = _plus(self._bias_sum, rows.sum(-1).square().sum((0, 1)))

    def add_unit_squares(self, squares: Tensor) -> None:
        """S = 1 only: add ``Σ_k δ_kn²`` (N, G, C) over some of the classes, formed elsewhere."""
        self._unit_squares = _plus(self._unit_squares, squares)

    def _add_single_position(self, single: Tensor) -> None:
        """S = 1: add ``Σ_k δ_kn²`` of cotangents (k, N, G, C), in place."""
        if self._unit_squares is None:
            self._unit_squares = torch.zeros_like(single[0])
        for row in single:
            self._unit_squares.addcmul_(row, row)

    def result(self) -> tuple[Tensor | None, Tensor | None]:
        """Weight and bias sums over everything added (None where not asked for)."""
        if self._unit_squares is not None:
            return self._single_position_sums(self._unit_squares)
        weight_sum = self._weight_sum
        if self._cotangent_gram is not None:
            patch_gram = torch.einsum("ngps,ngpt->ngst", self.captured, self.captured)
            weight_sum = (self._cotangent_gram * patch_gram).sum()
        bias_sum = self._bias_sum
        if bias_sum is not None and not self.diagonal:
            bias_sum = bias_sum.sum()
        return (weight_sum if self.weight else None), bias_sum

    def _single_position_sums(self, per_unit: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """S = 1: ``Σ_n Σ_k δ_kn² ⊗ U_n^⊙2`` (diagonal) or ``Σ_n Σ_k ‖δ_kn‖² ‖U_n‖²`` (trace)."""
        weight_sum = None
        if self.weight:
            if self.diagonal and self.unsquared:
                blocks = [
                    _times_squares(per_unit[:, g], self.captured[:, g, :, 0])
                    for g in range(per_unit.shape[1])
                ]
                # One group (Linear): a view, not stack's copy.
                weight_sum = blocks[0].unsqueeze(0) if len(blocks) == 1 else torch.stack(blocks)
            elif self.diagonal and per_unit.shape[1] == 1:
                # One group (every Linear layer): a plain (C, N) × (N, P) product, which runs
                # about 1.2× faster than the batched product einsum makes of it.
                weight_sum = (per_unit[:, 0].T @ self.captured[:, 0, :, 0]).unsqueeze(0)
            elif self.diagonal:
                weight_sum = torch.einsum("ngc,ngp->gcp", per_unit, self.captured[..., 0])
            else:
                weight_sum = (per_unit.sum(2) * self.captured[:, :, 0, 0]).sum()
        bias_sum = None
        if self.bias:
            bias_sum = per_unit.sum(0) if self.diagonal else per_unit.sum()
        return weight_sum, bias_sum

    def _gram_is_cheaper(self, C: int) -> bool:
        """Gram form cost S²(K·C + P) against the direct form's K·C·P·S."""
        P, S = self.captured.shape[2:]
        K = self.classes
        return S * (K * C + P) < K * C * P


def _times_squares(per_unit: Tensor, inputs: Tensor) -> Tensor:
    """``per_unitᵀ @ inputs^⊙2`` (C, P) for (N, C) and (N, P), squaring a block at a time.

    One block of squares of at most :data:`SQUARES_ELEMENTS`, reused, where squaring all of
    ``inputs`` at once allocates N × P fresh elements (whose pages fault in again on calls
    after glibc has handed them back).
    """
    N, P = inputs.shape
    rows = max(1, min(N, SQUARES_ELEMENTS // max(P, 1)))
    total = per_unit.new_zeros(per_unit.shape[1], P)
    squares = inputs.new_empty(rows, P)
    for first in range(0, N, rows):
        block = slice(first, min(first + rows, N))
        square = squares[: block.stop - block.start]
        torch.mul(inputs[block], inputs[block], out=square)
        total.addmm_(per_unit[block].T, square)
    return total


def layer_sums(
    captured: Tensor, rows: Tensor, *, weight: bool, bias: bool, diagonal: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Weight and bias sums of squares of one layer call, all K cotangents at once.

    ``captured`` comes from :func:`capture_patches`, ``rows`` are the cotangents ``δ``
    (K, N, G, C, S). With ``diagonal`` the weight sum is (G, C, P) and the bias sum (G, C);
    otherwise both are scalars (traces). None where not asked for.
    """
    sums = LayerSums(captured, classes=rows.shape[0], weight=weight, bias=bias, diagonal=diagonal)
    sums.add(rows)
    return sums.result()


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    """``total + term``, in place where ``total`` exists; ``term`` itself the first time."""
    return term if total is None else total.add_(term)


def _direct_trace(captured: Tensor, rows: Tensor) -> Tensor:
    """``Σ_kn ‖δ_kn U_nᵀ‖²`` by materialising ``δ_kn U_nᵀ``."""
    return sum(
        (gradients.square_().sum() for gradients in _per_cotangent_gradients(captured, rows)),
        start=rows.new_zeros(()),
    )


def _direct_diagonal(captured: Tensor, rows: Tensor) -> Tensor:
    """``Σ_kn (δ_kn U_nᵀ)^⊙2`` as a (G, C, P) tensor, by materialising ``δ_kn U_nᵀ``."""
    G, C = rows.shape[2:4]
    total = rows.new_zeros(G, C, captured.shape[2])
    for gradients in _per_cotangent_gradients(captured, rows):
        total += gradients.square_().sum((0, 1))  # squared in place: no second temporary
    return total


def _per_cotangent_gradients(captured: Tensor, rows: Tensor) -> Iterator[Tensor]:
    """``δ_kn U_nᵀ`` (K, n, G, C, P) for slices of the batch small enough to hold in memory.

    With one input per unit (P = 1: eval-mode batch-norm, one group per channel) each entry
    is a dot product over the positions, formed by a product and a sum: as a batched matrix
    product it would be K·N·G products of a 1 × S by an S × 1 matrix, which ran a ResNet-20's
    diagonal several times slower than its convolutions.
    """
    K, N, G, C = rows.shape[:4]
    P, S = captured.shape[2:]
    single_input = P == 1
    per_example = K * G * C * (S if single_input else P)
    step = max(1, DIRECT_FORM_ELEMENTS // per_example)
    for start in range(0, N, step):
        chunk, patches = rows[:, start : start + step], captured[start : start + step]
        if single_input:
            yield (chunk * patches.unsqueeze(0)).sum(-1, keepdim=True)
        else:
            yield torch.einsum("kngcs,ngps->kngcp", chunk, patches)
