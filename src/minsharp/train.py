"""Training loops for the experiments (SGD with momentum, the seed paper's schedule)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TrainingConfig:
    """SGD with momentum and the learning rate ``lr / (1 + decay · t)``, t = steps taken."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_decay: float = 1e-4
    seed: int = 0


@dataclass
class TrainingHistory:
    """Per-epoch mean training loss and accuracy (on the batches as they were seen)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def train_classifier(
    model: nn.Module, inputs: Tensor, labels: Tensor, config: TrainingConfig
) -> TrainingHistory:
    """Train ``model`` in place on ``(inputs, labels)`` with cross-entropy; deterministic.

    Minibatches are drawn by a permutation seeded from ``config.seed``; the model is left in
    eval mode.
    """
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 / (1.0 + config.lr_decay * step)
    )
    history = TrainingHistory()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(labels), config.batch_size):
            batch = order[start : start + config.batch_size]
            logits = model(inputs[batch])
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        history.loss.append(total_loss / len(labels))
        history.accuracy.append(correct / len(labels))
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """Fraction of ``inputs`` whose arg-max logit is the label."""
    return float((model(inputs).argmax(1) == labels).float().mean())
