"""Training networks for the studies, and checkpoints that rebuild them.

SGD (:mod:`.sgd`), the BN-sharpness penalty (:mod:`.bn_penalty`) and checkpoints
(:mod:`.checkpoint`).
"""

from minsharp.training.checkpoint import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    save_checkpoint,
)
from minsharp.training.sgd import (
    TrainingConfig,
    TrainingHistory,
    accuracy,
    learning_rate,
    train_classifier,
)

__all__ = [
    "CHECKPOINT_FILE",
    "WEIGHTS_FILE",
    "TrainingConfig",
    "TrainingHistory",
    "accuracy",
    "learning_rate",
    "load_checkpoint",
    "save_checkpoint",
    "train_classifier",
]
