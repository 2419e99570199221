"""The exact curvature engine: the cotangent pass of theory §1.

For a network piecewise linear in each parameter P, with mean softmax cross-entropy,

    H_PP = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n,        J_n = ∂z_n/∂P,

and since ``diag p − p pᵀ = Σ_j c_j c_jᵀ`` over K − 1 cotangents ``c_j = √p_j (e_j − q)``
(``minsharp.curvature.cotangents``),

    diag H_PP = (1/N) Σ_n Σ_j (J_nᵀ c_nj)^⊙2,     Tr H_PP = (1/N) Σ_n Σ_j ‖J_nᵀ c_nj‖².

One forward pass records, at each layer, its input patches (its inputs, for the generic rule
of ``minsharp.curvature.generic``) and the autograd edge of its output
(``minsharp.curvature.recording``). A Linear layer producing the logits gets its sums in
closed form; the K − 1 cotangents are pushed back from there (or from the logits) to the
other layers' outputs, never to the weights, a chunk of them at a time
(``minsharp.curvature.cotangents``; by hand through a Linear–ReLU chain,
``minsharp.curvature.chain``); the layer rules then form the sums of squares from
patches and cotangents
(``minsharp.curvature.patches``). How many examples a batch holds is the memory budget's
choice (``minsharp.curvature.budget``) unless ``batch_size`` fixes it: beyond the (N, K)
probabilities, a pass holds one chunk of cotangents at a time, so its memory is bounded
whatever K (:func:`layer_cotangents`, which returns all K − 1, holds them all).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from tqdm.auto import tqdm

from minsharp import distributed
from minsharp.curvature import budget, patches
from minsharp.curvature.chain import LinearReluChain, linear_relu_chain
from minsharp.curvature.cotangents import (
    class_cotangents,
    class_probabilities,
    cotangent_count,
    head_cotangents,
    head_unit_squares,
    pull_back,
)
from minsharp.curvature.generic import (
    GenericCall,
    GenericLayer,
    GenericSums,
    math_attention,
    outside_uses,
)
from minsharp.curvature.guard import (
    PROBE_EXAMPLES,
    known_piecewise_linear,
    parameter_uses,
    ratio_tolerance,
    second_order_ratios,
)
from minsharp.curvature.layers import Layer, find_layers, model_dtype_device, preserved_buffers
from minsharp.curvature.recording import AnyCall, AnyLayer, Call, recording, run_forward
from minsharp.curvature.recording import check_logits as check_logits
from minsharp.curvature.results import Curvature, CurvatureDiagonal, CurvatureTrace
from minsharp.curvature.rules import LINEAR
from minsharp.data.batches import batch_count, input_batches
from minsharp.errors import (
    ModelError,
    NoSecondDerivativeError,
    NotPiecewiseLinearError,
)
from minsharp.options import choice

#: The batch size of the measures that take one (others, not the curvature engine, whose
#: default ``batch_size=None`` picks the batch from the memory budget, ``budget.batch_size``).
DEFAULT_BATCH_SIZE = 256
#: The values of the ``curvature`` option: the exact Hessian, or the generalized Gauss–Newton.
CURVATURES: tuple[Curvature, ...] = ("hessian", "ggn")


def hessian_trace(
    model: nn.Module,
    data: Any,
    *,
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
) -> CurvatureTrace:
    """Exact trace of each parameter's diagonal Hessian block, ``Tr H_PP``.

    ``Tr H_PP = (1/N) Σ_n Σ_k p_nk ‖J_nᵀ (e_k − p_n)‖²`` for the mean softmax cross-entropy
    over all N examples of ``data`` (theory §1; Ibayashi, Hamaguchi & Imaizumi 2021, "Minimum
    sharpness: scale-invariant parameter-robustness of neural networks", eq. for the
    per-layer trace). Exact for every parameter in which the network is piecewise linear
    (ReLU, pooling, residual sums, concatenation, eval-mode batch-norm…), whatever the forward
    code: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and eval-mode batch-norm by their fast rules,
    every other module (``nn.LayerNorm``, ``nn.Embedding``, attention, parametrized layers)
    by the generic rule (theory §1a), which gives its exact GGN block with ``curvature="ggn"``.

    Args:
        model: the network; its output must be logits of shape (N, K). It is handed back as
            given (mode, parameters, ``.grad``, hooks, buffers).
        data: a tensor X, a tuple (X, y), or an iterable/DataLoader of such batches. Labels
            are not used: the quantity does not depend on them.
        curvature: ``"hessian"`` checks on a probe batch that the network is piecewise linear
            in each parameter and raises :class:`NotPiecewiseLinearError` otherwise;
            ``"ggn"`` returns the exact generalized Gauss–Newton traces for any network.
        batch_size: examples per pass; memory grows linearly with it. ``None`` (the
            default, and the fast choice) takes the largest batch that fits the memory budget
            (:func:`minsharp.curvature.budget.batch_size`: 1 GiB in all, no single tensor
            over 32 MiB), estimated from the layers' sizes on one example.
        progress: show a progress bar over batches.

    Example:
        A single linear layer has ``Tr H_WW = (1/N) Σ_n ‖x_n‖² (1 − ‖p_n‖²)``:

        >>> import torch
        >>> layer = torch.nn.Linear(3, 4, bias=False).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> p = layer(x).softmax(1)
        >>> expected = (x.square().sum(1) * (1 - p.square().sum(1))).mean()
        >>> abs(hessian_trace(layer, x).total - expected.item()) < 1e-12
        True
    """
    done = _curvature_pass(model, data, curvature, batch_size, progress, diagonal=False)
    return CurvatureTrace(
        by_parameter={name: float(total) / done.num_examples for name, total in done.sums.items()},
        **done.about(curvature),
    )


def hessian_diagonal(
    model: nn.Module,
    data: Any,
    *,
    curvature: Curvature = "hessian",
    batch_size: int | None = None,
    progress: bool = False,
) -> CurvatureDiagonal:
    """Exact diagonal of each parameter's Hessian block, ``diag H_PP``, shaped like P.

    ``diag H_PP = (1/N) Σ_n Σ_k p_nk (J_nᵀ (e_k − p_n))^⊙2`` (theory §1; Ibayashi et al. 2021).
    Arguments, exactness conditions and guarantees as for :func:`hessian_trace`; the result
    is in the model's dtype and on its device.

    Example:
        For one linear layer, ``diag H_WW[c, j] = (1/N) Σ_n (p_nc − p_nc²) x_nj²``:

        >>> import torch
        >>> layer = torch.nn.Linear(3, 4, bias=False).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> p = layer(x).softmax(1).detach()
        >>> expected = (p - p.square()).T @ x.square() / 5
        >>> torch.allclose(hessian_diagonal(layer, x)["weight"], expected)
        True
    """
    done = _curvature_pass(model, data, curvature, batch_size, progress, diagonal=True)
    parameters = dict(model.named_parameters())
    return CurvatureDiagonal(
        by_parameter={
            name: total.div_(done.num_examples).to(parameters[name].dtype)
            for name, total in done.sums.items()
        },
        **done.about(curvature),
    )


@dataclass(frozen=True)
class _Pass:
    """What one pass over the data summed, and how."""

    sums: dict[str, Tensor]
    """Per parameter, the sum over examples (not yet divided by N)."""
    num_examples: int
    seconds: float
    batch_size: int

    def about(self, curvature: Curvature) -> dict[str, Any]:
        """The result fields besides the values."""
        return {
            "curvature": curvature,
            "num_examples": self.num_examples,
            "seconds": self.seconds,
            "batch_size": self.batch_size,
        }


def _curvature_pass(
    model: nn.Module,
    data: Any,
    curvature: Curvature,
    batch_size: int | None,
    progress: bool,
    *,
    diagonal: bool,
) -> _Pass:
    """Per-parameter sums over examples (not yet divided by N), N, seconds and batch size.

    The data's own batches are split into even batches of at most B examples, B from the
    memory budget unless ``batch_size`` fixes it (:func:`budget.batch_size`, sized on the
    first batch).
    """
    choice("curvature", curvature, CURVATURES)
    start = time.perf_counter()
    layers = find_layers(model)
    dtype, device = model_dtype_device(model)
    # Sums over several batches are kept in float64: long runs in float32 lose nothing to
    # accumulation.
    accumulate = torch.float64 if device.type != "mps" else dtype
    parameters = dict(model.named_parameters())
    num_examples = size = 0

    def local_sums() -> dict[str, Tensor]:
        nonlocal num_examples, size
        sums: dict[str, Tensor] = {}
        reaching: set[str] = set()
        chain: LinearReluChain | None = None
        # With batch_size=None the data's batches are taken whole here and split below.
        chunk = sys.maxsize if batch_size is None else batch_size
        batches = input_batches(data, chunk, device, dtype)
        count = batch_count(data, chunk)
        # A disabled bar still costs about 30 µs (benchmarks/results/engine_choices.md).
        bar = tqdm(batches, total=count, desc="curvature", unit="batch") if progress else batches
        index = 0
        for given in bar:
            if index == 0:
                probe = given[:PROBE_EXAMPLES]
                reaching = check_formula(model, layers, probe, curvature)
                chain = linear_relu_chain(model, layers, probe)
                size = batch_size or _auto_batch_size(model, layers, probe, diagonal, chain)
            for inputs in given.split(budget.even_split(given.shape[0], size)):
                num_examples += inputs.shape[0]
                if distributed.owns(index):
                    found = _batch_sums(model, layers, inputs, diagonal, reaching, chain)
                    for name, value in found.items():
                        _accumulate(sums, name, value, accumulate)
                index += 1
        return _completed(sums, layers, parameters, diagonal, accumulate)

    with preserved_buffers(model), autograd_enabled():
        sums = distributed.summed_over_ranks(local_sums)
    return _Pass(sums, num_examples, time.perf_counter() - start, size)


def _completed(
    sums: dict[str, Tensor],
    layers: list[AnyLayer],
    parameters: dict[str, Tensor],
    diagonal: bool,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """``sums`` with zeros (in ``dtype``) for the parameters no batch reached.

    All in ``dtype`` when ranks will add them up, however many batches each had.
    """
    for layer in layers:
        for name in layer.parameter_names:
            if name not in sums:  # a layer whose output never reached the logits
                shape = parameters[name].shape if diagonal else ()
                sums[name] = parameters[name].new_zeros(shape, dtype=dtype)
    if distributed.active():
        return {name: total.to(dtype) for name, total in sums.items()}
    return sums


def _accumulate(sums: dict[str, Tensor], name: str, value: Tensor, dtype: torch.dtype) -> None:
    """Add one batch's ``value`` to ``sums[name]``, in ``dtype`` from the second batch on.

    One batch's sums stay as computed: zeros in ``dtype``, the sum and the cast back would be
    three passes over every diagonal for nothing; over several batches ``dtype`` (float64)
    keeps long runs in float32 from losing accuracy to accumulation.
    """
    held = sums.get(name)
    if held is None:
        sums[name] = value
    elif held.dtype != dtype:
        sums[name] = held.to(dtype).add_(value)
    else:
        held.add_(value)


def _auto_batch_size(
    model: nn.Module,
    layers: list[AnyLayer],
    probe: Tensor,
    diagonal: bool,
    chain: LinearReluChain | None,
) -> int:
    """Examples per batch within the memory budget (:func:`budget.batch_size`).

    A Linear–ReLU chain's footprint follows from its widths; other models run the probe.
    """
    if chain is not None:
        need = chain.footprint(diagonal=diagonal)
    else:
        need = budget.footprint(
            model,
            layers,
            probe,
            diagonal=diagonal,
            forward=lambda inputs: run_forward(model, inputs),
        )
    return budget.batch_size(need, probe.element_size())


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Gradient recording on, also when the caller is inside ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _batch_sums(
    model: nn.Module,
    layers: list[AnyLayer],
    inputs: Tensor,
    diagonal: bool,
    reaching: set[str],
    chain: LinearReluChain | None,
) -> dict[str, Tensor]:
    """Per-parameter sums over one batch; ``reaching``: layers whose output reaches the logits.

    A Linear–ReLU ``chain`` goes all the way by hand (:meth:`LinearReluChain.batch_sums`).
    Otherwise one recording forward pass; then, when the logits are the output of a Linear
    layer (the head), its sums in closed form (:func:`head_unit_squares`) and the K − 1
    cotangents pulled back through it without the K × K block (:func:`head_cotangents`);
    otherwise the K − 1 cotangents of the logits (:func:`class_cotangents`). They go back to
    the other layers' outputs a chunk at a time, and each layer accumulates its sums of
    squares (:class:`patches.LayerSums`).
    """
    if chain is not None:
        return chain.batch_sums(inputs, diagonal=diagonal)
    with recording(layers, inputs.shape[0], diagonal) as calls:
        logits = run_forward(model, inputs)
    recorded = [(layer, call) for layer in layers if (call := calls.get(layer.name)) is not None]
    if not recorded:
        return {}
    count = cotangent_count(logits.shape[1])
    accumulators = {
        layer.name: _accumulator(layer, call, count, diagonal) for layer, call in recorded
    }
    with torch.no_grad():
        probabilities = class_probabilities(logits.detach())
    head = _head(recorded, logits)
    if head is None:
        start, rest = logits, recorded
        cotangents = functools.partial(class_cotangents, probabilities)
    else:
        head_layer, head_call = head
        with torch.no_grad():
            accumulators[head_layer.name].add_unit_squares(head_unit_squares(probabilities))
            cotangents = head_cotangents(head_layer.module.weight.detach(), probabilities)
        start = head_call.source
        rest = [(layer, call) for layer, call in recorded if layer is not head_layer]
    unused = {layer.name for layer, _ in rest}
    if rest and start.requires_grad:
        unused = _pushed_back(start, rest, cotangents, count, accumulators)
    if unused & reaching:
        raise untraced_error(sorted(unused & reaching)[0])
    sums = {}
    for layer, _ in recorded:
        if layer.name in unused:
            continue
        found = accumulators[layer.name]
        if isinstance(found, GenericSums):
            sums.update(found.result())
        else:
            assert isinstance(layer, Layer)
            sums.update(layer.by_parameter(*found.result(), diagonal=diagonal))
    return sums


def _accumulator(
    layer: AnyLayer, call: AnyCall, classes: int, diagonal: bool
) -> patches.LayerSums | GenericSums:
    """The sums of one layer call: the patch form for a fast rule, the generic rule else."""
    if isinstance(layer, GenericLayer):
        assert isinstance(call, GenericCall)
        return GenericSums(layer, call, diagonal=diagonal)
    assert isinstance(call, Call)
    return patches.LayerSums(
        call.captured,
        classes=classes,
        weight=layer.weight is not None,
        bias=layer.bias is not None,
        diagonal=diagonal,
    )


def _pushed_back(
    start: Tensor,
    rest: list[tuple[AnyLayer, AnyCall]],
    cotangents: Callable[[slice], Tensor],
    count: int,
    accumulators: dict[str, patches.LayerSums | GenericSums],
) -> set[str]:
    """Pull the cotangents of ``start`` back to the layers of ``rest`` into their sums.

    Returns the names of the layers whose output the backward passes did not reach.
    """
    unused = set()
    edges = [edge for _, call in rest for edge in call.edges]
    size = start.numel() + sum(call.output_size for _, call in rest)
    for pulled in pull_back(start, edges, cotangents, count, size):
        at_edges = iter(pulled)
        with torch.no_grad():
            for layer, call in rest:
                mine = [next(at_edges) for _ in call.edges]
                found = accumulators[layer.name]
                if all(cotangent is None for cotangent in mine):
                    unused.add(layer.name)
                elif isinstance(found, GenericSums):
                    found.add(mine)
                else:
                    assert isinstance(layer, Layer)
                    found.add(layer.rule.rows(layer.module, mine[0]))
    return unused


def untraced_error(name: str) -> ModelError:
    """The error for a layer whose parameters reach the logits but whose output was not reached.

    The backward pass from the logits missed the layer's output: an engine limitation, never
    the user's fault.
    """
    return ModelError(
        f"the output of module {name or '(root)'} could not be traced back from the logits "
        "although its parameters affect them. Please report this model to the minsharp "
        "developers."
    )


def _head(recorded: list[tuple[AnyLayer, AnyCall]], logits: Tensor) -> tuple[Layer, Call] | None:
    """The recorded ``nn.Linear`` call on 2-D input whose output is the logits, if any."""
    edge = get_gradient_edge(logits)
    for layer, call in recorded:
        if (
            isinstance(layer, Layer)
            and isinstance(call, Call)
            and layer.rule is LINEAR
            and call.source.dim() == 2
            and call.source._version == call.source_version
            and call.edge == edge
        ):
            return layer, call
    return None


def check_formula(
    model: nn.Module, layers: list[AnyLayer], probe: Tensor, curvature: Curvature
) -> set[str]:
    """Raise if the per-layer formula is not exact for ``model`` (see ``guard``).

    Models that are piecewise linear by construction (``guard.known_piecewise_linear``) pass
    at once. Otherwise parameters used outside one call of their module always raise
    :class:`ModelError`, and parameters in which the network is not piecewise linear raise
    :class:`NotPiecewiseLinearError` unless ``curvature == "ggn"``. Returns the names of the
    layers whose parameters reach the logits.
    """
    if known_piecewise_linear(model):
        return {layer.name for layer in layers}
    names = [name for layer in layers for name in layer.parameter_names]
    parameters = dict(model.named_parameters())
    # The probe's second derivatives need attention's math kernel (the fused one has none).
    with math_attention():
        with recording(layers, probe.shape[0], diagonal=False) as calls:
            logits = run_forward(model, probe)
        uses = parameter_uses(logits)
        owner = {name: layer for layer in layers for name in layer.parameter_names}
        misused = [
            name
            for name in names
            if _misused(owner[name], uses[id(parameters[name])], owner[name].name in calls)
        ]
        generic = [
            (layer, call)
            for layer in layers
            if isinstance(layer, GenericLayer)
            and isinstance(call := calls.get(layer.name), GenericCall)
        ]
        misused += [name for name in outside_uses(logits, generic) if name not in misused]
        if misused:
            raise ModelError(
                f"parameters used more than once per forward pass, or outside their module's "
                f"forward: {', '.join(misused)} (weight sharing, or functional use such as "
                "F.linear(x, layer.weight)). The exact formula needs each parameter used "
                "once, through a call of its module (a module without a fast rule may use "
                "it several times, but only in a call its recorded inputs replay)."
            )
        used = [name for name in names if uses[id(parameters[name])] >= 1]
        if curvature == "hessian" and used:
            _check_piecewise_linear(logits, {name: parameters[name] for name in used}, owner)
    return {owner[name].name for name in used}


def _misused(layer: AnyLayer, uses: int, called: bool) -> bool:
    """Whether a parameter with ``uses`` edges in the graph breaks its layer's rule.

    A fast rule needs the parameter used once, by its module's call; the generic rule lets
    the module's call use it any number of times (:func:`outside_uses` checks that nothing
    else does).
    """
    if uses == 0:
        return False
    return not called or (isinstance(layer, Layer) and uses > 1)


def _check_piecewise_linear(
    logits: Tensor, parameters: dict[str, Tensor], owner: dict[str, AnyLayer]
) -> None:
    """Raise :class:`NotPiecewiseLinearError` naming parameters the logits curve in."""
    tolerance = ratio_tolerance(logits.dtype)
    try:
        ratios = second_order_ratios(logits, parameters)
    except RuntimeError as error:  # an operation without a double backward
        raise NoSecondDerivativeError(
            "curvature='hessian' checks on a probe batch that the network is piecewise "
            "linear in each parameter, which takes second derivatives, and torch has none "
            f"for an operation of this model ({error}). Pass curvature='ggn' (first "
            "derivatives only) for the exact generalized Gauss–Newton quantities."
        ) from error
    failing = {name: ratio for name, ratio in ratios.items() if not ratio <= tolerance}
    if failing:
        listed = "\n  ".join(
            f"{name} in {owner[name].name or '(root)'} ({type(owner[name].module).__name__}): "
            f"second-order ratio {ratio:.2e}"
            for name, ratio in failing.items()
        )
        raise NotPiecewiseLinearError(
            "the network is not piecewise linear in these parameters, so the Hessian block "
            "is not the Gauss–Newton block the engine computes (second derivatives of the "
            f"logits found on a probe batch; tolerance {tolerance:.1e}):\n  {listed}\n"
            "Cause: a smooth nonlinearity (tanh, sigmoid, GELU, softplus), normalisation "
            "(LayerNorm, train-mode batch-norm) or attention after these layers. Pass "
            "curvature='ggn' to get the exact generalized Gauss–Newton quantities instead, "
            "labelled as such."
        )


@dataclass(frozen=True)
class LayerCotangents:
    """What :func:`layer_cotangents` returns for one layer on one batch."""

    layer: Layer
    captured: Tensor
    """The layer's input as :func:`patches.capture_patches` keeps it for traces: squared
    norms ``‖U_n‖²`` (N, G, 1, 1) when the layer has one position, the patches ``U``
    (N, G, P, S) otherwise."""
    cotangents: Tensor | None
    """``J_nᵀ c_nj`` with respect to the layer's output, for the K − 1 cotangents ``c_nj``
    that factor the logits' Hessian (:func:`cotangents.class_cotangents`): shape
    (K − 1, N, *output shape); None when the output does not
    reach the logits."""


def layer_cotangents(
    model: nn.Module, layers: list[Layer], inputs: Tensor
) -> list[LayerCotangents]:
    """Input patches and back-propagated cotangents at the output of each fast layer.

    The engine's recording forward pass and its backward passes of the K − 1 cotangents
    (theory §1), stacked, for measures that combine them differently from the per-parameter
    sums of :func:`hessian_trace` (for example with the layer's weight, as relative flatness
    does). Layers that did not run are left out. Call inside :func:`autograd_enabled` and
    after :func:`check_formula` has vetted the layers.
    """
    with recording(layers, inputs.shape[0], diagonal=False) as calls:
        logits = run_forward(model, inputs)
    recorded = [(layer, call) for layer in layers if (call := calls.get(layer.name)) is not None]
    if not recorded:
        return []
    with torch.no_grad():
        probabilities = class_probabilities(logits.detach())
    edges = [call.edge for _, call in recorded]
    count = cotangent_count(logits.shape[1])
    size = logits.numel() + sum(call.output_size for _, call in recorded)
    cotangents = functools.partial(class_cotangents, probabilities)
    chunks = list(pull_back(logits, edges, cotangents, count, size))
    return [
        LayerCotangents(
            layer,
            call.captured,
            None if chunks[0][i] is None else torch.cat([chunk[i] for chunk in chunks]),
        )
        for i, (layer, call) in enumerate(recorded)
    ]
