"""Small float64 networks beyond chains, and an independent solver, for the full-group tests."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from tests.symmetries import network
from torch import Tensor, nn

from minsharp.curvature import brute_force_ggn_diagonal, brute_force_hessian_diagonal
from minsharp.symmetry.graph import SymmetryGroup


class ResidualMLP(nn.Module):
    """x → relu(fc0) → h; h + fc1(h) (tied) → relu → head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.head = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc0(x))
        return self.head(torch.relu(h + self.fc1(h)))


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn + skip, relu, pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.pool, self.head = nn.AvgPool2d(2), nn.Linear(3 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        r = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.head(torch.flatten(self.pool(torch.relu(h + r)), 1))


class Inception(nn.Module):
    """Two conv branches concatenated along channels, then flatten into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 3, padding=1)
        self.mix = nn.Conv2d(5, 4, 2, stride=2)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.head(torch.relu(self.mix(h)).flatten(1))


class Branchy(nn.Module):
    """Data-dependent control flow: not traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        return y if y.sum() > 0 else -y


def bn_mlp(trained: bool) -> nn.Module:
    """Linear-BN-ReLU ×2 then Linear; ``trained`` draws buffers and affine parameters."""
    model = nn.Sequential(
        nn.Linear(4, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 4),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, 3),
    )
    if trained:
        with torch.no_grad():
            for module in model:
                if isinstance(module, nn.BatchNorm1d):
                    module.running_mean.normal_(0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1, 0.3)
                    module.bias.normal_(0, 0.3)
    return model


def grouped_cnn() -> nn.Module:
    """Grouped then depthwise convolutions, max-pooled, flattened into a Linear."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    )


def transformer() -> nn.Module:
    """Linear embedding, a ReLU TransformerEncoderLayer (attention and norms frozen), head."""
    layer = nn.TransformerEncoderLayer(6, 2, 7, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(3, 6), layer, nn.Flatten(), nn.Linear(6 * 3, 3))
    for name, parameter in layer.named_parameters():
        if not name.startswith(("linear1", "linear2")):
            parameter.requires_grad_(False)  # the engine has no attention/LayerNorm rule yet
    return model


CASES = {
    "residual_mlp": (ResidualMLP, (4,)),
    "bn_mlp_trained": (lambda: bn_mlp(True), (4,)),
    "bn_mlp_init": (lambda: bn_mlp(False), (4,)),
    "residual_block": (ResidualBlock, (2, 4, 4)),
    "inception": (Inception, (2, 4, 4)),
    "grouped_cnn": (grouped_cnn, (2, 4, 4)),
    # The registry's chains (tests/symmetries.py): a ReLU MLP, and a CNN flattened into a Linear.
    "plain_mlp": (lambda: network("mlp", batchnorm=False, seed=0), (5,)),
    "plain_cnn": (lambda: network("cnn", batchnorm=False, seed=0), (2, 6, 6)),
}


def build(case: str, seed: int = 0, examples: int = 12) -> tuple[nn.Module, Tensor]:
    """A float64 eval-mode network of ``case`` with biases that matter, and its inputs."""
    factory, shape = CASES[case]
    torch.manual_seed(seed)
    model = factory().double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    return model, torch.randn(examples, *shape, dtype=torch.float64)


def brute_diagonal(model: nn.Module, inputs: Tensor, ggn: bool = False) -> dict[str, Tensor]:
    """The brute-force Hessian (or GGN) diagonal (labels do not enter it)."""
    if ggn:
        return brute_force_ggn_diagonal(model, inputs)
    labels = torch.zeros(inputs.shape[0], dtype=torch.long)
    return brute_force_hessian_diagonal(model, inputs, labels)


def scipy_minimum(
    diagonal: dict[str, Tensor],
    edges: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: np.ndarray,
) -> float:
    """``min_u Σ_p h_p e^{−2(u[dst] − u[src])} + rest`` by BFGS, entry by entry (no coalescing).

    ``classes`` maps each unit id to a variable (0: fixed at 0).
    """
    terms, constant = [], 0.0
    for name, h in diagonal.items():
        if name not in edges:
            constant += float(h.sum())
            continue
        dst, src = edges[name]
        shape = h.shape
        trailing = (1,) * (len(shape) - np.ndim(dst))
        d = np.broadcast_to(classes[np.reshape(dst, np.shape(dst) + trailing)], shape)
        s = np.broadcast_to(classes[np.reshape(src, np.shape(src) + trailing)], shape)
        terms.append((h.numpy().ravel(), d.ravel(), s.ravel()))
    weight = np.concatenate([t[0] for t in terms])
    dst = np.concatenate([t[1] for t in terms])
    src = np.concatenate([t[2] for t in terms])
    size = int(classes.max()) + 1

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        u = np.concatenate([[0.0], x])
        w = weight * np.exp(-2 * (u[dst] - u[src]))
        grad = -2 * np.bincount(dst, w, size) + 2 * np.bincount(src, w, size)
        return float(w.sum()), grad[1:]

    result = scipy.optimize.minimize(
        objective,
        np.zeros(size - 1),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-13, "maxiter": 5000},
    )
    return result.fun + constant


def classes_of(group: SymmetryGroup) -> np.ndarray:
    """Unit id → variable index (ground 0), from the group's ties."""
    return np.unique(group.representatives(), return_inverse=True)[1]
