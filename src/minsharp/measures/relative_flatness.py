"""Relative flatness (Petzka, Kamp, Adilova, Sminchisescu & Boley 2021).

For the weight matrix ``W`` (rows ``w_s``) of one Linear layer, by default the last one,
whose input is the feature representation ``φ(x)``:

    κ_Tr(W) = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'},      H_{s,s'} = ∂²L / ∂w_s ∂w_s'.

For a network piecewise linear in ``W`` (theory §1), ``H_WW = (1/N) Σ_n J_nᵀ A_n J_n`` with
``A_n = diag p_n − p_n p_nᵀ = Σ_k c_nk c_nkᵀ``. For the layer ``y = W h + b`` write ``g_nk``
for the centred cotangent ``c_nk`` pushed back to the layer output ``y``; then
``∂y_s/∂W_{s'j} = δ_{ss'} h_j`` gives

    Tr H_{s,s'} = (1/N) Σ_n ‖h_n‖² Σ_k g_nk,s g_nk,s'

and so

    κ_Tr(W) = (1/N) Σ_n ‖h_n‖² Σ_k g_nkᵀ W Wᵀ g_nk = (1/N) Σ_n ‖h_n‖² Σ_k ‖Wᵀ g_nk‖².

For the last layer ``g_nk = c_nk`` and ``Σ_k ‖Wᵀ c_nk‖² = Tr(Wᵀ A_n W)``, a closed form in
``p_n`` and ``φ(x_n)``. With extra leading dimensions (sequences) the rank-one factor becomes
the Gram form ``Σ_k ‖Wᵀ δ_nk U_nᵀ‖²`` of ``minsharp.curvature.patches``, which is what the
code evaluates in every case. Labels do not enter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minsharp import distributed
from minsharp.curvature import patches
from minsharp.curvature.engine import (
    CURVATURES,
    DEFAULT_BATCH_SIZE,
    autograd_enabled,
    check_formula,
    layer_cotangents,
    run_forward,
    untraced_error,
)
from minsharp.curvature.guard import PROBE_EXAMPLES
from minsharp.curvature.layers import (
    Layer,
    check_measurable,
    model_dtype_device,
    preserved_buffers,
)
from minsharp.curvature.results import Curvature
from minsharp.curvature.rules import RULES
from minsharp.data.batches import batch_count, input_batches
from minsharp.errors import MinsharpError, ModelError
from minsharp.measures.result import Evaluation
from minsharp.options import choice


def relative_flatness(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    layer: str | None = None,
    curvature: Curvature = "hessian",
) -> Evaluation:
    """Relative flatness ``κ_Tr(W) = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'}`` of one Linear layer.

    Petzka, Kamp, Adilova, Sminchisescu & Boley 2021, "Relative flatness and
    generalization". ``W`` is the weight of the layer (rows ``w_s``, one per output unit),
    ``H_{s,s'}`` the block of the Hessian of the mean cross-entropy for rows ``s`` and ``s'``.
    Computed exactly, without forming the Hessian, as

        κ_Tr(W) = (1/N) Σ_n ‖h_n‖² Σ_k ‖Wᵀ g_nk‖²,

    ``h_n`` the layer's input and ``g_nk`` the centred cotangent ``√p_nk (e_k − p_n)``
    back-propagated to the layer's output (for the last layer, ``g_nk`` is the cotangent
    itself). Labels are not used. Biases are not part of ``W``.

    Invariant to the layer (α-scale) and batch-norm rescalings; not to a per-neuron
    rescaling at the junction feeding ``W`` (it moves ``‖h_n‖²`` unit by unit).

    Args:
        model: the network in eval mode; its output must be logits (N, K).
        data: a tensor X, a tuple (X, y), or an iterable/DataLoader of such batches.
        batch_size: examples per pass.
        progress: show a progress bar over batches.
        layer: module name of an ``nn.Linear`` layer (as in ``model.named_modules()``);
            default: the last Linear layer the forward pass calls.
        curvature: ``"hessian"`` checks that the network is piecewise linear in ``W`` and
            raises :class:`~minsharp.errors.NotPiecewiseLinearError` otherwise; ``"ggn"``
            returns the same quantity for the generalized Gauss–Newton matrix, for any
            network.

    Returns:
        ``value`` κ_Tr(W), ``per_layer`` ``{layer: κ}``; ``details`` the layer and
        curvature used and ``weight_trace`` ``Tr H_WW`` for comparison.

    Example:
        For one linear layer, ``κ = (1/N) Σ_n ‖x_n‖² Tr(Wᵀ (diag p_n − p_n p_nᵀ) W)``:

        >>> import torch
        >>> net = torch.nn.Linear(3, 4).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> p = net(x).softmax(1).detach()
        >>> W = net.weight.detach()
        >>> A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        >>> expected = (x.square().sum(1) * torch.einsum("sj,nst,tj->n", W, A, W)).mean()
        >>> abs(relative_flatness(net, x).value - expected.item()) < 1e-12
        True
    """
    _check_options(layer, curvature)
    check_measurable(model)
    sums = _LocalSums(model, data, batch_size, progress, layer, curvature)
    with preserved_buffers(model), autograd_enabled():
        totals = distributed.summed_over_ranks(sums)
    return sums.evaluation(totals)


def _check_options(layer: str | None, curvature: Curvature) -> None:
    """Validate :func:`relative_flatness`'s ``curvature`` and ``layer`` options."""
    choice("curvature", curvature, CURVATURES)
    if layer is not None and not isinstance(layer, str):
        raise MinsharpError(
            f"option layer must be the module name of an nn.Linear layer, or None for the "
            f"last one; got {layer!r}."
        )


class _LocalSums:
    """This rank's ``Σ_n ‖h_n‖² Σ_k ‖Wᵀ g_nk‖²`` and ``Tr H_WW`` sums, for ``summed_over_ranks``.

    The layer is chosen (and the formula checked) on the first batch's probe examples;
    ``chosen`` and ``num_examples`` (every rank counts all examples) are set by the call.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        batch_size: int,
        progress: bool,
        layer: str | None,
        curvature: Curvature,
    ) -> None:
        self.model, self.data, self.batch_size, self.progress = model, data, batch_size, progress
        self.layer, self.curvature = layer, curvature
        self.dtype, self.device = model_dtype_device(model)
        self.accumulate = torch.float64 if self.device.type != "mps" else self.dtype
        self.num_examples = 0
        self.chosen: Layer | None = None

    def evaluation(self, totals: dict[str, Tensor]) -> Evaluation:
        """κ_Tr(W) from the sums over all ranks: ``totals["flatness"] / N``."""
        assert self.chosen is not None  # input_batches raises on empty data
        value = float(totals["flatness"]) / self.num_examples
        return Evaluation(
            value=value,
            num_examples=self.num_examples,
            per_layer={self.chosen.name: value},
            details={
                "layer": self.chosen.name,
                "curvature": self.curvature,
                "weight_trace": float(totals["weight_trace"]) / self.num_examples,
            },
            resolved={"layer": self.chosen.name},
        )

    def __call__(self) -> dict[str, Tensor]:
        model, device, accumulate = self.model, self.device, self.accumulate
        flatness = torch.zeros((), dtype=accumulate, device=device)
        weight_trace = torch.zeros((), dtype=accumulate, device=device)
        reaching = False
        batches = input_batches(self.data, self.batch_size, device, self.dtype)
        count = batch_count(self.data, self.batch_size)
        bar = tqdm(batches, total=count, disable=not self.progress, desc="relative flatness")
        for chunk, inputs in enumerate(bar):
            if self.chosen is None:
                probe = inputs[:PROBE_EXAMPLES]
                self.chosen = _linear_layer(model, self.layer, probe)
                reaching = self.chosen.name in check_formula(
                    model, [self.chosen], probe, self.curvature
                )
            self.num_examples += inputs.shape[0]
            if distributed.owns(chunk):
                flat, trace = _batch_sums(model, self.chosen, inputs, reaching)
                flatness += flat.to(accumulate)
                weight_trace += trace.to(accumulate)
        return {"flatness": flatness, "weight_trace": weight_trace}


def _batch_sums(
    model: nn.Module, chosen: Layer, inputs: Tensor, reaching: bool
) -> tuple[Tensor, Tensor]:
    """Sums over one batch of ``‖h_n‖² Σ_k ‖Wᵀ g_nk‖²`` and of ``‖h_n‖² Σ_k ‖g_nk‖²``."""
    zero = inputs.new_zeros((), dtype=chosen.module.weight.dtype)
    found = layer_cotangents(model, [chosen], inputs)
    if not found:
        raise ModelError(
            f"layer {chosen.name or '(root)'} is not called by the model's forward pass, so "
            "its weight has no curvature to measure; pick a layer the model uses."
        )
    (recorded,) = found
    if recorded.cotangents is None:
        if reaching:
            raise untraced_error(chosen.name)
        return zero, zero
    with torch.no_grad():
        rows = chosen.rule.rows(chosen.module, recorded.cotangents)  # (K, N, 1, C, S)
        weight = chosen.module.weight.detach()
        C, P = weight.shape
        trace, _ = patches.layer_sums(
            recorded.captured, rows, weight=True, bias=False, diagonal=False
        )
        if rows.shape[-1] == 1 and C <= P:
            # One position: ‖h_n‖² Σ_k g_nkᵀ (W Wᵀ) g_nk, with the C × C Gram matrix.
            single = rows[..., 0]  # (K, N, 1, C)
            quadratic = ((single @ (weight @ weight.T)) * single).sum((0, 2, 3))
            flat = (quadratic * recorded.captured[:, 0, 0, 0]).sum()
        else:
            # Wᵀ g: rows of C output units become rows of P input units.
            pulled = torch.einsum("kngcs,cp->kngps", rows, weight)
            flat, _ = patches.layer_sums(
                recorded.captured, pulled, weight=True, bias=False, diagonal=False
            )
    assert flat is not None and trace is not None
    return flat, trace


def _linear_layer(model: nn.Module, name: str | None, probe: Tensor) -> Layer:
    """The Linear layer ``name`` (default: the last one called), checked to be measurable."""
    modules = dict(model.named_modules())
    linear = [n for n, m in modules.items() if type(m) is nn.Linear]
    listed = ", ".join(n or "(root)" for n in linear) or "none"
    if name is None:
        called = _called_in_order(model, linear, probe)
        if not called:
            raise ModelError(
                "relative flatness needs an nn.Linear layer (the feature layer), and the "
                f"model's forward pass calls none. Linear layers of the model: {listed}."
            )
        name = called[-1]
    elif name not in modules:
        raise MinsharpError(
            f"option layer: the model has no module named {name!r}. Its nn.Linear layers "
            f"are: {listed}."
        )
    elif type(modules[name]) is not nn.Linear:
        raise MinsharpError(
            f"option layer: module {name!r} is a {type(modules[name]).__name__}; relative "
            f"flatness is defined for the weight of an nn.Linear layer. The model's Linear "
            f"layers are: {listed}."
        )
    module = modules[name]
    if not module.weight.requires_grad:
        raise ModelError(
            f"the weight of layer {name or '(root)'} is frozen (requires_grad is False); "
            "relative flatness measures the curvature of a trainable weight. Pick another "
            f"layer with the option layer= (Linear layers: {listed})."
        )
    prefix = f"{name}." if name else ""
    return Layer(name, module, RULES[nn.Linear], weight=f"{prefix}weight", bias=None)


def _called_in_order(model: nn.Module, names: list[str], probe: Tensor) -> list[str]:
    """Which of the modules ``names`` one forward pass on ``probe`` calls, in call order."""
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: order.append(name)
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            run_forward(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    return order
