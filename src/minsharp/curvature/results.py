"""Result containers of the curvature engine: values keyed by parameter name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from torch import Tensor

Curvature = Literal["hessian", "ggn"]
V = TypeVar("V", float, Tensor)


@dataclass(frozen=True)
class _PerParameter(Mapping[str, V], Generic[V]):
    by_parameter: dict[str, V]
    """Parameter name (as in ``model.named_parameters()``) → its value."""
    curvature: Curvature
    """``"hessian"`` (exact Hessian, network checked piecewise linear) or ``"ggn"``."""
    num_examples: int
    """Number of examples N the mean loss ran over."""
    seconds: float
    """Wall time of the computation."""
    batch_size: int = 0
    """Examples per pass the engine used (chosen from the memory budget unless fixed)."""

    def __getitem__(self, name: str) -> V:
        return self.by_parameter[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_parameter)

    def __len__(self) -> int:
        return len(self.by_parameter)

    def by_layer(self) -> dict[str, dict[str, V]]:
        """Module name → {local parameter name → value}, e.g. ``{"fc1": {"weight": ..}}``."""
        layers: dict[str, dict[str, V]] = {}
        for name, value in self.by_parameter.items():
            module, _, local = name.rpartition(".")
            layers.setdefault(module, {})[local] = value
        return layers


@dataclass(frozen=True)
class CurvatureTrace(_PerParameter[float]):
    """Traces ``Tr H_PP`` of the diagonal Hessian (or GGN) block of each parameter tensor P."""

    @property
    def total(self) -> float:
        """``Tr H`` over all measured parameters: the sum of the per-parameter traces."""
        return float(sum(self.by_parameter.values()))


@dataclass(frozen=True)
class CurvatureDiagonal(_PerParameter[Tensor]):
    """Diagonals ``diag H_PP`` of each parameter tensor P, shaped like the parameter."""

    def trace(self) -> CurvatureTrace:
        """The traces of the same blocks (sums of the diagonals)."""
        return CurvatureTrace(
            by_parameter={name: float(d.sum()) for name, d in self.by_parameter.items()},
            curvature=self.curvature,
            num_examples=self.num_examples,
            seconds=self.seconds,
            batch_size=self.batch_size,
        )

    @property
    def total(self) -> float:
        """``Tr H`` over all measured parameters."""
        return self.trace().total
