"""Former home of training and checkpoints, kept so that existing code keeps working.

Everything here moved to :mod:`minsharp.training`; importing a name from ``minsharp.train``
still works, with a :class:`DeprecationWarning` naming the new place.
"""

from __future__ import annotations

import warnings
from typing import Any

from minsharp import training


def __getattr__(name: str) -> Any:
    if name not in training.__all__:
        raise AttributeError(f"module 'minsharp.train' has no attribute {name!r}")
    warnings.warn(
        f"minsharp.train.{name} moved to minsharp.training.{name}; import it from there.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(training, name)
