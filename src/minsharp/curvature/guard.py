"""Checks that the exact engine's formula applies to a model, run on a small probe batch.

Two things can make ``H_PP = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n`` (theory §1) wrong for a
parameter P:

* P is used outside one call of its module (weight sharing, functional use): found by
  counting the edges into each parameter in the autograd graph of the logits;
* the logits are not piecewise linear in P (tanh, GELU, LayerNorm…). The Hessian block
  differs from the Gauss–Newton block by ``R_PP = Σ_nk r_nk ∂²z_nk/∂P²`` (r: loss gradient
  w.r.t. the logits), which vanishes for every r iff every ``∂²z_nk/∂P²`` does. We take the
  scalar ``s = Σ_nk c_nk z_nk`` with random ``c`` (so the test does not depend on the labels
  or on how well the model fits them) and compare ``‖∂²s/∂P² v‖`` with ``‖∂s/∂P‖`` for a
  random ``v`` as large as P: a dimensionless ratio, structurally zero when the logits are
  piecewise linear in P (autograd's second derivatives of ReLU, pooling and friends are
  exact zeros) and of order one otherwise.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules import module as module_internals

from minsharp.curvature.rules import fast_rule

#: Examples in the probe batch.
PROBE_EXAMPLES = 8

#: Parameter-free modules whose output is piecewise linear (or affine) in their input, in
#: eval mode (``find_layers`` refuses batch-norm and dropout in training mode).
PIECEWISE_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


#: Functions a traced forward may call between the modules and stay piecewise linear in
#: every parameter: sums, ReLU, reshaping, indexing and concatenation (no products).
PIECEWISE_LINEAR_FUNCTIONS = frozenset(
    {operator.add, torch.add, torch.relu, F.relu, torch.flatten, torch.cat, operator.getitem}
)
#: Tensor methods of the same kind (``size`` reads a shape).
PIECEWISE_LINEAR_METHODS = frozenset(
    {"add", "relu", "flatten", "view", "reshape", "contiguous", "size"}
)


def forward_altered(model: nn.Module) -> bool:
    """Whether a module of ``model`` may not compute what its class's ``forward`` says.

    A forward hook (global or on a module) can change an output, and so can a ``forward``
    assigned on an instance (``model[1].forward = torch.tanh``): judging a module by its
    class would then be wrong, so such models get the probe and the engine's general path.
    """
    if module_internals._global_forward_hooks or module_internals._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in model.modules()
    )


def known_piecewise_linear(model: nn.Module) -> bool:
    """Whether ``model`` is piecewise linear in each parameter by construction.

    True for a plain ``nn.Sequential`` (not a subclass: its forward is the composition) of
    supported layers and :data:`PIECEWISE_LINEAR_MODULES`, nested Sequentials allowed, each
    module instance used once; and for any model whose forward ``torch.fx`` traces into
    calls of such modules, each layer called once, joined only by
    :data:`PIECEWISE_LINEAR_FUNCTIONS` and :data:`PIECEWISE_LINEAR_METHODS` (residual sums,
    ``torch.relu``, flattening: a ResNet). Never with forward hooks or a ``forward`` set on
    an instance (:func:`forward_altered`). Then every parameter enters the logits once,
    through a piecewise-linear map, and the probe is moot: it costs one double-backward pass
    per parameter tensor.
    """
    if forward_altered(model):
        return False
    seen: set[int] = set()

    def known(module: nn.Module) -> bool:
        if id(module) in seen:
            return False
        seen.add(id(module))
        if type(module) is nn.Sequential:
            return all(known(child) for child in module)
        return _known_module(module)

    if type(model) is nn.Sequential and known(model):
        return True
    return _traces_piecewise_linear(model)


def _known_module(module: nn.Module) -> bool:
    return fast_rule(module) is not None or type(module) in PIECEWISE_LINEAR_MODULES


class _Tracer(fx.Tracer):
    """Keeps the known modules as calls and traces through every other one."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _known_module(m) or super().is_leaf_module(m, module_qualified_name)


def _traces_piecewise_linear(model: nn.Module) -> bool:
    """The ``torch.fx`` half of :func:`known_piecewise_linear`.

    Tracing runs the forward on proxies, and a forward may assign to its module's
    attributes: it traces a copy whose parameters and buffers are storage-less (``meta``)
    tensors, so the user's model is never touched and nothing is copied but its structure.
    """
    memo: dict[int, object] = {id(b): b.detach().to("meta") for b in model.buffers()}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
    try:
        model = copy.deepcopy(model, memo)
        graph = _Tracer().trace(model)
    except Exception:  # any forward fx cannot trace (data-dependent code...): the probe decides
        return False
    called: Counter[str] = Counter()
    inputs = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            inputs += 1
        elif node.op == "call_module":
            if not _known_module(model.get_submodule(node.target)):
                return False
            called[node.target] += 1
        elif node.op == "call_function":
            if node.target not in PIECEWISE_LINEAR_FUNCTIONS:
                return False
        elif node.op == "call_method":
            if node.target not in PIECEWISE_LINEAR_METHODS:
                return False
        elif node.op != "output":  # get_attr: a parameter or buffer used outside its module
            return False
    return inputs == 1 and all(count == 1 for count in called.values())


def parameter_uses(logits: Tensor) -> Counter[int]:
    """Number of autograd edges into each leaf tensor (keyed by ``id``) behind ``logits``."""
    uses: Counter[int] = Counter()
    seen: set[torch.autograd.graph.Node] = set()
    stack = [logits.grad_fn] if logits.grad_fn is not None else []
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                uses[id(variable)] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


def second_order_ratios(
    logits: Tensor, parameters: dict[str, Tensor], seed: int = 0
) -> dict[str, float]:
    """``‖(∂²s/∂P²) v‖ / ‖∂s/∂P‖`` per parameter P, with ``s = Σ c·z`` and ``‖v‖ = ‖P‖``.

    ``logits`` (n, K) must have been computed from ``parameters`` with gradient recording.
    Zero exactly where the logits are piecewise linear in P.
    """
    generator = torch.Generator().manual_seed(seed)

    def random_like(tensor: Tensor) -> Tensor:
        draw = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        return draw.to(tensor.device)

    names = list(parameters)
    tensors = [parameters[name] for name in names]
    weights = random_like(logits)
    gradients = torch.autograd.grad(
        (logits * weights).sum(), tensors, create_graph=True, materialize_grads=True
    )
    ratios = {}
    for name, tensor, gradient in zip(names, tensors, gradients, strict=True):
        if not gradient.requires_grad:  # ∂s/∂P does not depend on P at all
            ratios[name] = 0.0
            continue
        direction = random_like(tensor)
        size = tensor.detach().norm()
        direction *= (size if size > 0 else tensor.numel() ** 0.5) / direction.norm()
        (curvature,) = torch.autograd.grad(
            gradient, tensor, direction, retain_graph=True, materialize_grads=True
        )
        numerator, denominator = curvature.norm().item(), gradient.detach().norm().item()
        if numerator == 0:
            ratios[name] = 0.0
        else:
            ratios[name] = numerator / denominator if denominator > 0 else float("inf")
    return ratios


def ratio_tolerance(dtype: torch.dtype) -> float:
    """Largest ratio put down to rounding: the square root of the dtype's epsilon."""
    return torch.finfo(dtype).eps ** 0.5
