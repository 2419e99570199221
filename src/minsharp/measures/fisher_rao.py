"""The Fisher–Rao norm (Liang, Poggio, Rakhlin & Stokes 2019).

``‖θ‖²_FR = E[(θᵀ ∇_θ ℓ(x, y))²]``, the squared norm of the parameters in the Fisher
metric evaluated at the parameters themselves. With logits ``z_n`` and their directional
derivative ``dz_n = J_n θ`` along ``θ`` (a Jacobian-vector product),

    θᵀ ∇_θ ℓ(x_n, y) = (p_n − e_y)ᵀ dz_n,

so the whole norm costs one forward pass and two backward passes, whatever the architecture.

A function-preserving reparametrisation ``θ → Tθ`` with diagonal ``T`` (layer, neuron and
batch-norm rescalings) maps gradients to ``T⁻¹ ∇ℓ``, so ``⟨Tθ, T⁻¹∇ℓ⟩ = ⟨θ, ∇ℓ⟩`` and the
norm is invariant to all three symmetries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from tqdm.auto import tqdm

from minsharp import distributed
from minsharp.curvature.engine import (
    DEFAULT_BATCH_SIZE,
    autograd_enabled,
    check_logits,
    run_forward,
)
from minsharp.curvature.layers import check_measurable, model_dtype_device, preserved_buffers
from minsharp.data.batches import (
    batch_count,
    check_label_range,
    input_batches,
    labelled_batches,
)
from minsharp.errors import MinsharpError
from minsharp.measures.result import Evaluation
from minsharp.options import choice

Labels = Literal["true", "model"]


def fisher_rao_norm(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    labels: Labels = "true",
) -> Evaluation:
    """Fisher–Rao norm ``‖θ‖²_FR = E[(θᵀ ∇_θ ℓ(x, y))²]`` over all trainable parameters θ.

    Liang, Poggio, Rakhlin & Stokes 2019, "Fisher–Rao metric, geometry, and complexity of
    neural networks". With ``dz_n = J_n θ`` the derivative of the logits along θ (one
    Jacobian-vector product per batch) and ``p_n`` the softmax,
    ``θᵀ∇ℓ(x_n, y) = (p_n − e_y)ᵀ dz_n``:

    * ``labels="true"`` (empirical): ``(1/N) Σ_n ((p_n − e_{y_n})ᵀ dz_n)²`` with the data's
      labels;
    * ``labels="model"``: ``y ~ p(·|x_n)`` summed exactly over the K classes,
      ``(1/N) Σ_n Σ_k p_nk (dz_nk − p_nᵀ dz_n)² = (1/N) Σ_n dz_nᵀ (diag p_n − p_n p_nᵀ) dz_n``;
      labels are then not needed.

    Exact for any differentiable network (no piecewise-linearity needed). Invariant to every
    function-preserving diagonal rescaling of the parameters (layer, neuron, batch-norm),
    since ``⟨Tθ, T⁻¹∇ℓ⟩ = ⟨θ, ∇ℓ⟩``. For a bias-free ReLU chain of depth L,
    ``θᵀ∇ℓ = L (p − e_y)ᵀ z`` (the paper's structural identity).

    Args:
        model: the network in eval mode; its output must be logits (N, K).
        data: ``(X, y)`` or an iterable/DataLoader of ``(X, y)`` batches; with
            ``labels="model"`` inputs alone suffice.
        batch_size: examples per forward pass.
        progress: show a progress bar over batches.
        labels: ``"true"`` or ``"model"``, as above.

    Returns:
        The norm as ``value``; ``details["mean_projection"]`` holds ``E[θᵀ∇ℓ]`` for
        ``labels="true"`` (``θᵀ∇L``, the gradient of the mean loss along θ).

    Example:
        A single bias-free linear layer has ``dz_n = z_n``:

        >>> import torch
        >>> layer = torch.nn.Linear(3, 4, bias=False).double()
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
        >>> z = layer(x).detach()
        >>> projection = ((z.softmax(1) * z).sum(1) - z[range(5), y])
        >>> value = fisher_rao_norm(layer, (x, y)).value
        >>> abs(value - projection.square().mean().item()) < 1e-12
        True
    """
    choice("labels", labels, ("true", "model"))
    check_measurable(model)
    # Inside torch.inference_mode() the tensors made here would be inference tensors, which
    # autograd and in-place accumulation refuse: work outside it throughout.
    with autograd_enabled():
        total, projection_sum, num_examples = _sums(model, data, labels, batch_size, progress)
    details: dict[str, Any] = {"labels": labels}
    if labels == "true":
        details["mean_projection"] = projection_sum / num_examples
    return Evaluation(value=total / num_examples, num_examples=num_examples, details=details)


def _sums(
    model: nn.Module, data: Any, labels: Labels, batch_size: int, progress: bool
) -> tuple[float, float, int]:
    """Sums over the data of ``(θᵀ∇ℓ)²`` (expected over y for "model") and of ``θᵀ∇ℓ``."""
    dtype, device = model_dtype_device(model)
    parameters = {
        name: p.detach().requires_grad_() for name, p in model.named_parameters() if p.requires_grad
    }
    if not parameters:
        raise MinsharpError("model has no trainable parameters: the Fisher–Rao norm is empty.")
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update((name, b.detach().clone()) for name, b in model.named_buffers())

    def logits_at(point: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(model, {**fixed, **point}, (inputs,), strict=True)

    num_examples = 0
    num_classes = 0
    forward_mode = checked = False

    def local_sums() -> dict[str, Tensor]:
        nonlocal num_examples, num_classes, forward_mode, checked
        total = torch.zeros((), dtype=torch.float64, device=device)
        projection_sum = torch.zeros((), dtype=torch.float64, device=device)
        batches = _batches(data, labels, batch_size, device, dtype)
        count = batch_count(data, batch_size)
        bar = tqdm(batches, total=count, disable=not progress, desc="fisher-rao")
        for chunk, (inputs, targets) in enumerate(bar):
            if chunk == 0:  # a failing forward pass raises a clear error here, on every rank
                with preserved_buffers(model), torch.no_grad():
                    num_classes = run_forward(model, inputs[:1]).shape[1]
            if targets is not None:
                check_label_range(int(targets.max()), num_classes)
            num_examples += inputs.shape[0]
            if not distributed.owns(chunk):
                continue
            logits = logits_at(parameters, inputs)
            check_logits(logits, inputs.shape[0])
            # The adjoint check runs on the first batch of every rank (each rank owns others).
            first_here, checked = not checked, True
            tangent = None if forward_mode else _along_parameters(logits, parameters, first_here)
            if tangent is None:  # an operation without a (correct) double backward
                forward_mode = True
                tangent = _forward_mode_tangent(
                    lambda point, inputs=inputs: logits_at(point, inputs), parameters
                )
            probabilities = logits.detach().double().softmax(1)
            tangent = tangent.detach().double()
            centred = tangent - (probabilities * tangent).sum(1, keepdim=True)
            if targets is None:
                total += (probabilities * centred.square()).sum()
            else:
                # θᵀ∇ℓ_n = (p_n − e_y)ᵀ dz_n = −(dz_ny − p_nᵀ dz_n)
                projections = -centred.gather(1, targets[:, None])[:, 0]
                total += projections.square().sum()
                projection_sum += projections.sum()
        return {"total": total, "projection": projection_sum}

    sums = distributed.summed_over_ranks(local_sums)
    return float(sums["total"]), float(sums["projection"]), num_examples


def _along_parameters(logits: Tensor, parameters: dict[str, Tensor], check: bool) -> Tensor | None:
    """``dz = J θ``, the logits' derivative along the parameters, by two backward passes.

    ``g(u) = Jᵀu`` is linear in ``u``, so ``∇_u ⟨g(u), θ⟩ = J θ``. Reverse mode twice instead
    of forward mode: the same cost once warm, and no forward-mode start-up (torch compiles its
    forward-mode decompositions on a process's first forward-mode call, about 0.25 s). An
    operation whose backward torch cannot differentiate either raises or, marked
    ``once_differentiable`` without a forward-mode rule, silently cuts the second pass; with
    ``check`` the adjoint identity ``⟨u₀, J θ⟩ = ⟨Jᵀu₀, θ⟩`` for a random ``u₀`` (one more
    first-order backward) catches the cut. None when it fails or torch refuses.
    """
    if not logits.requires_grad:  # no parameter reaches the logits
        return torch.zeros_like(logits)
    cotangent = torch.zeros_like(logits, requires_grad=True)
    weights = list(parameters.values())
    try:
        pulled = torch.autograd.grad(
            logits, weights, grad_outputs=cotangent, create_graph=True, allow_unused=True
        )
        if check:
            probe = torch.randn(
                logits.shape, generator=torch.Generator().manual_seed(0), dtype=logits.dtype
            ).to(logits.device)
            back = torch.autograd.grad(
                logits, weights, grad_outputs=probe, retain_graph=True, allow_unused=True
            )
            adjoint = _inner_with(back, weights)
        (tangent,) = torch.autograd.grad(_inner_with(pulled, weights), cotangent, allow_unused=True)
    except RuntimeError:
        return None
    tangent = torch.zeros_like(logits) if tangent is None else tangent.detach()
    if check:
        forward = float((probe * tangent).sum(dtype=torch.float64))
        backward = float(adjoint)
        scale = float((probe * tangent).abs().sum(dtype=torch.float64)) + abs(backward)
        if abs(forward - backward) > math.sqrt(torch.finfo(logits.dtype).eps) * scale:
            return None
    return tangent


def _inner_with(gradients: tuple[Tensor | None, ...], weights: list[Tensor]) -> Tensor:
    """``Σ_p ⟨g_p, θ_p⟩`` over the parameters the gradient reaches (θ detached)."""
    pairs = zip(gradients, weights, strict=True)
    terms = [(g * p.detach()).sum() for g, p in pairs if g is not None]
    return sum(terms, torch.zeros((), dtype=weights[0].dtype, device=weights[0].device))


def _forward_mode_tangent(
    logits_at: Callable[[dict[str, Tensor]], Tensor], parameters: dict[str, Tensor]
) -> Tensor:
    """``dz = J θ`` by forward mode, for models with an operation that has no double backward."""
    point = {name: p.detach() for name, p in parameters.items()}
    with warnings.catch_warnings():
        # torch's first forward-mode call loads decompositions through torch.jit.script
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
        return jvp(logits_at, (point,), (point,))[1]


def _batches(
    data: Any, labels: Labels, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(inputs, labels)`` batches; labels None when the model's own distribution is used."""
    if labels == "true":
        yield from labelled_batches(data, batch_size, device, dtype)
    else:
        for inputs in input_batches(data, batch_size, device, dtype):
            yield inputs, None
