"""Discovery of the full rescaling group from a model's torch.fx graph (theory §7).

The model is traced by a :class:`torch.fx.Tracer` and the traced graph is run on a
probe batch; each tensor carries a *label*: the axis its units live on and the unit id of
every index along it (id 0 is the ground: inputs, logits and pinned units). :data:`OP_RULES`,
one entry per operation, says how an operation propagates labels, creates units (Linear,
Conv, eval batch-norm, the ReLU feed-forward of a transformer layer) and which parameter
entries go from which unit to which; anything not in it pins the units it reads. Residual
additions tie units (union-find); the result is a :class:`SymmetryGroup`.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from minsharp.errors import ModelError

GROUND = 0
_BatchNorm = nn.modules.batchnorm._BatchNorm
_Encoder = nn.TransformerEncoderLayer


@dataclass(frozen=True)
class Label:
    """Unit ids along one axis of a tensor."""

    axis: int
    ids: np.ndarray


@dataclass
class SymmetryGroup:
    """Units, ties and pins of a model, and each parameter's (destination, source) units.

    A group element with log-scales u multiplies every entry of parameter P by
    ``e^{u[dst] − u[src]}`` (``dst``/``src`` arrays broadcastable to P's shape, raw unit ids).
    """

    parent: list[int] = field(default_factory=lambda: [GROUND])
    units: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Module name → (first unit id, number of units)."""
    edges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def new_units(self, name: str, count: int) -> np.ndarray:
        """Fresh unit ids for ``count`` units owned by module ``name``."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.units[name] = (start, count)
        return np.arange(start, start + count)

    def from_ground(self, parameter: str, units: np.ndarray) -> None:
        """Parameter ``parameter`` (a bias or an affine factor) feeds ``units`` from the ground."""
        self.edges[parameter] = (units, np.zeros_like(units))

    def find(self, unit: int) -> int:
        """The representative of ``unit``'s tie class (the ground's is 0)."""
        root = unit
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[unit] != root:
            self.parent[unit], unit = root, self.parent[unit]
        return root

    def tie(self, first: np.ndarray, second: np.ndarray) -> None:
        """Units that must share one scale (pairwise); the ground wins."""
        for a, b in zip(np.ravel(first).tolist(), np.ravel(second).tolist(), strict=True):
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def pin(self, label: Label | None) -> None:
        """Tie every unit of ``label`` to the ground."""
        if label is not None:
            self.tie(label.ids, np.zeros_like(label.ids))

    def representatives(self) -> np.ndarray:
        """The representative of every unit id."""
        return np.array([self.find(unit) for unit in range(len(self.parent))])

    def tie_layers(self) -> None:
        """Restrict to the layer-wise subgroup: all units of one module share a scale."""
        for start, count in self.units.values():
            self.tie(np.full(count, start), np.arange(start, start + count))


@dataclass
class _Context:
    group: SymmetryGroup
    modules: dict[str, nn.Module]
    shared: set[str]
    """Modules whose parameters are also used elsewhere: their units are pinned."""


Rule = Callable[[_Context, str, list[Any], Tensor, nn.Module | None], "Label | None"]


def discover(model: nn.Module, probe: Tensor) -> SymmetryGroup:
    """The rescaling group of ``model``, found by running its fx graph on ``probe``.

    Submodules that torch.fx cannot trace are kept whole (leaves, which pin the units they
    read, as unknown modules do). Raises :class:`~minsharp.errors.ModelError` when the
    model's own forward cannot be traced.
    """
    graph = _traced(model)
    context = _Context(SymmetryGroup(), dict(model.named_modules()), _shared_modules(model, graph))
    _Propagation(model, graph, context).run(probe)
    return context.group


class _LeafTracer(fx.Tracer):
    """A tracer that keeps the named submodules whole."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


def _traced(model: nn.Module) -> fx.Graph:
    """``model``'s fx graph; untraceable submodules become leaves.

    The graph is run by an interpreter over ``model`` itself, so no GraphModule (and its
    generated code) is built.
    """
    try:
        return fx.Tracer().trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, NotImplementedError…
        failure: Exception = error
    leaves = {name for name, module in model.named_modules() if name and not _traceable(module)}
    if leaves:
        tracer = _LeafTracer(leaves)
        try:
            return tracer.trace(model)
        except Exception as error:
            failure = error
    raise ModelError(
        f"cannot trace {type(model).__name__} with torch.fx ({type(failure).__name__}: "
        f"{failure}). The rescaling group is read from the traced graph, so the model's own "
        "forward must not branch on tensor values (data-dependent control flow) or make "
        "untraceable calls. Move such code into a submodule of its own: minsharp keeps a "
        "submodule it cannot trace whole and pins the units it reads."
    ) from failure


def _traceable(module: nn.Module) -> bool:
    try:
        fx.symbolic_trace(module)
    except Exception:  # any tracing failure: the module is kept whole
        return False
    return True


def _shared_modules(model: nn.Module, graph: fx.Graph) -> set[str]:
    """Modules called more than once, or whose parameters are shared or read directly."""
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    shared = {name for name, count in calls.items() if count > 1}
    read = {node.target for node in graph.nodes if node.op == "get_attr"}
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    for names in owners.values():
        if len(names) > 1 or any(name in read for name in names):
            shared.update(name.rpartition(".")[0] for name in names)
    return shared


class _Propagation(fx.Interpreter):
    """Runs the traced graph, carrying a :class:`Label` (or None: all ground) per node."""

    def __init__(self, model: nn.Module, graph: fx.Graph, context: _Context) -> None:
        super().__init__(model, graph=graph)
        self.context = context
        self.labels: dict[fx.Node, Label | None] = {}

    def run_node(self, node: fx.Node) -> Any:
        value = super().run_node(node)
        labels: list[Label | None] = []
        fx.node.map_arg((node.args, node.kwargs), lambda arg: labels.append(self.labels.get(arg)))
        module = self.context.modules[node.target] if node.op == "call_module" else None
        rule = _rule_for(node, module, self.context)
        if node.op == "placeholder" or (not isinstance(value, Tensor) and rule is not _query):
            for label in labels:
                self.context.group.pin(label)
            self.labels[node] = None
        else:
            arguments = [self._argument(arg) for arg in (*node.args, *node.kwargs.values())]
            self.labels[node] = rule(self.context, str(node.target), arguments, value, module)
        return value

    def _argument(self, arg: Any) -> Any:
        """Nodes become (value, label) pairs; lists of nodes lists of pairs."""
        if isinstance(arg, fx.Node):
            return (self.env[arg], self.labels.get(arg))
        if isinstance(arg, (list, tuple)):
            return [self._argument(item) for item in arg]
        return arg


def _rule_for(node: fx.Node, module: nn.Module | None, context: _Context) -> Rule:
    if node.op == "output":
        return _pin
    if node.op == "call_module":
        if node.target in context.shared:
            return _pin
        return next((rule for kind, rule in MODULE_RULES if isinstance(module, kind)), _pin)
    if node.op in ("call_function", "call_method"):
        return OP_RULES.get(node.target, _pin)
    return _pin


def _labels_in(arguments: list[Any]) -> list[Label | None]:
    found: list[Label | None] = []
    for argument in arguments:
        if isinstance(argument, list):
            found += _labels_in(argument)
        elif isinstance(argument, tuple) and len(argument) == 2 and isinstance(argument[0], Tensor):
            found.append(argument[1])
    return found


def _pin(context: _Context, name: str, arguments: list[Any], value: Any, module: Any) -> None:
    """Not known to commute with positive per-unit scales: its inputs are pinned."""
    for label in _labels_in(arguments):
        context.group.pin(label)


def _query(context: _Context, name: str, arguments: list[Any], value: Any, module: Any) -> None:
    """Reads only shapes (``x.size()``, ``x.dim()``): no constraint."""


def _keep(
    context: _Context, name: str, arguments: list[Any], value: Any, module: Any
) -> Label | None:
    """Elementwise positively homogeneous (ReLU, LeakyReLU, PReLU, eval dropout): same units."""
    tensor, label = arguments[0]
    return label if tensor.shape == value.shape else _pin(context, name, arguments, value, module)


def _spatial(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: Any
) -> Label | None:
    """Pooling over positions of one channel: units on axis 1 keep their identity."""
    tensor, label = arguments[0]
    if label is None:
        return None
    if label.axis != 1 or tensor.dim() < 3 or value.shape[:2] != tensor.shape[:2]:
        return _pin(context, name, arguments, value, module)
    return label


def _reshape(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: Any
) -> Label | None:
    """Flatten (N, C, *S) → (N, C·S): channel c becomes its block of S features."""
    tensor, label = arguments[0]
    if label is None or tensor.shape == value.shape:
        return label
    flattened = value.dim() == 2 and value.shape[0] == tensor.shape[0] and label.axis == 1
    if not flattened:
        return _pin(context, name, arguments, value, module)
    block = int(np.prod(tensor.shape[2:], dtype=np.int64))
    return Label(1, np.repeat(label.ids, block))


def _add(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: Any
) -> Label | None:
    """Residual sum (or difference): both operands' units are tied."""
    operands = [a for a in arguments[:2] if isinstance(a, tuple)]
    scalars = [a for a in arguments[:2] if not isinstance(a, tuple)]
    same = len(operands) == 2 and operands[0][0].shape == operands[1][0].shape == value.shape
    if not same or len(arguments) > 2 or any(s != 0 for s in scalars):
        return _pin(context, name, arguments, value, module)
    first, second = operands[0][1], operands[1][1]
    if first is None or second is None or first.axis != second.axis:
        context.group.pin(first)
        context.group.pin(second)
        return None
    context.group.tie(first.ids, second.ids)
    return first


def _scale(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: Any
) -> Label | None:
    """Multiplication or division by a positive number: same units."""
    if len(arguments) == 2 and isinstance(arguments[1], (int, float)) and arguments[1] > 0:
        return arguments[0][1]
    return _pin(context, name, arguments, value, module)


def _cat(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: Any
) -> Label | None:
    """Concatenation along the units' axis keeps identities; along another axis ties them."""
    parts = arguments[0]
    dim = arguments[1] if len(arguments) > 1 else 0
    dim = dim % value.dim()
    labels = [label for _, label in parts]
    if all(label is None for label in labels):
        return None
    axes = {label.axis for label in labels if label is not None}
    if axes == {dim}:
        ids = [
            label.ids if label is not None else np.zeros(t.shape[dim], dtype=np.int64)
            for t, label in parts
        ]
        return Label(dim, np.concatenate(ids))
    if len(axes) == 1 and None not in labels and dim not in axes:
        for label in labels[1:]:
            context.group.tie(labels[0].ids, label.ids)
        return labels[0]
    return _pin(context, name, arguments, value, module)


def _linear(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: nn.Linear
) -> Label:
    """Y = W h + b over the last axis: W[i, j] goes from input unit j to new unit i."""
    tensor, label = arguments[0]
    inputs = _input_ids(context, label, tensor.dim() - 1, module.in_features)
    outputs = context.group.new_units(name, module.out_features)
    context.group.edges[f"{name}.weight"] = (outputs[:, None], inputs[None, :])
    if module.bias is not None:
        context.group.from_ground(f"{name}.bias", outputs)
    return Label(value.dim() - 1, outputs)


def _conv(
    context: _Context,
    name: str,
    arguments: list[Any],
    value: Tensor,
    module: nn.modules.conv._ConvNd,
) -> Label:
    """A (grouped) convolution: output channel o reads only its group's input channels."""
    label = arguments[0][1]
    inputs = _input_ids(context, label, 1, module.in_channels)
    outputs = context.group.new_units(name, module.out_channels)
    per_group_in = module.in_channels // module.groups
    group_of = np.arange(module.out_channels) // (module.out_channels // module.groups)
    sources = inputs[group_of[:, None] * per_group_in + np.arange(per_group_in)[None, :]]
    trailing = (1,) * (module.weight.dim() - 2)
    context.group.edges[f"{name}.weight"] = (
        outputs.reshape(-1, 1, *trailing),
        sources.reshape(*sources.shape, *trailing),
    )
    if module.bias is not None:
        context.group.from_ground(f"{name}.bias", outputs)
    return Label(1, outputs)


def _batchnorm(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: _BatchNorm
) -> Label | None:
    """Eval batch-norm: its fixed statistics pin its inputs; γ_c, β_c feed new unit c."""
    context.group.pin(arguments[0][1])
    if module.training or not module.affine:
        return None
    outputs = context.group.new_units(name, module.num_features)
    for local in ("weight", "bias"):
        context.group.from_ground(f"{name}.{local}", outputs)
    return Label(1, outputs)


def _transformer(
    context: _Context, name: str, arguments: list[Any], value: Tensor, module: _Encoder
) -> None:
    """Only the ReLU feed-forward hidden units are free; attention and LayerNorm pin."""
    _pin(context, name, arguments, value, module)
    relu = module.activation is F.relu or isinstance(module.activation, nn.ReLU)
    if module.training or not relu:
        return None
    hidden = context.group.new_units(f"{name}.linear1", module.linear1.out_features)
    ground = np.zeros_like(hidden)
    context.group.edges[f"{name}.linear1.weight"] = (hidden[:, None], ground[:1, None])
    if module.linear1.bias is not None:
        context.group.edges[f"{name}.linear1.bias"] = (hidden, ground)
    context.group.edges[f"{name}.linear2.weight"] = (ground[:1, None], hidden[None, :])
    return None


def _input_ids(context: _Context, label: Label | None, axis: int, size: int) -> np.ndarray:
    """Unit ids of a layer's input features; units on another axis cannot be followed."""
    if label is not None and label.axis == axis and label.ids.size == size:
        return label.ids
    context.group.pin(label)
    return np.zeros(size, dtype=np.int64)


#: Module types → rule (first match wins); modules not listed pin the units they read.
MODULE_RULES: list[tuple[type[nn.Module], Rule]] = [
    (nn.Linear, _linear),
    (nn.modules.conv._ConvNd, _conv),
    (nn.modules.batchnorm._BatchNorm, _batchnorm),
    (nn.TransformerEncoderLayer, _transformer),
    (nn.ReLU, _keep),
    (nn.LeakyReLU, _keep),
    (nn.PReLU, _keep),
    (nn.Dropout, _keep),
    (nn.Identity, _keep),
    (nn.modules.pooling._MaxPoolNd, _spatial),
    (nn.modules.pooling._AvgPoolNd, _spatial),
    (nn.modules.pooling._AdaptiveAvgPoolNd, _spatial),
    (nn.modules.pooling._AdaptiveMaxPoolNd, _spatial),
    (nn.Flatten, _reshape),
]
# Transposed convolutions lay their weight out as (in, out): not the rule above.
MODULE_RULES.insert(0, (nn.modules.conv._ConvTransposeNd, _pin))

#: Functions and tensor methods → rule; anything else pins the units it reads.
OP_RULES: dict[Any, Rule] = {
    torch.relu: _keep,
    F.relu: _keep,
    "relu": _keep,
    F.leaky_relu: _keep,
    F.dropout: _keep,
    "contiguous": _keep,
    F.max_pool1d: _spatial,
    F.max_pool2d: _spatial,
    F.avg_pool1d: _spatial,
    F.avg_pool2d: _spatial,
    F.adaptive_avg_pool1d: _spatial,
    F.adaptive_avg_pool2d: _spatial,
    torch.flatten: _reshape,
    "flatten": _reshape,
    "view": _reshape,
    "reshape": _reshape,
    operator.add: _add,
    torch.add: _add,
    "add": _add,
    operator.iadd: _add,
    operator.sub: _add,
    operator.mul: _scale,
    operator.truediv: _scale,
    torch.cat: _cat,
    torch.concat: _cat,
    "size": _query,
    "dim": _query,
    getattr: _query,
}
