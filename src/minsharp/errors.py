"""Exceptions raised by minsharp.

Every error says what was expected, what was found, and how to fix it. All derive from
:class:`MinsharpError`, itself a :class:`ValueError`, so callers can catch one type.
"""

from __future__ import annotations


class MinsharpError(ValueError):
    """Base class of every error minsharp raises on bad input."""


class DataError(MinsharpError):
    """The data argument is empty, malformed, or holds non-finite values."""


class ModelError(MinsharpError):
    """The model cannot be measured as given (output shape, non-finite weights, mode)."""


class UnsupportedModuleError(ModelError):
    """A module has no fast rule where one is needed (its weight read as units)."""


class NotPiecewiseLinearError(ModelError):
    """The network is not piecewise linear in some parameters, so the formula is not exact."""


class NoSecondDerivativeError(ModelError):
    """An operation of the model has no second derivative in torch (no double backward)."""


class NotAChainError(ModelError):
    """The model is not a chain of positively homogeneous layers: α-rescaling changes it."""


class StudyError(MinsharpError):
    """A study's configuration, directory or stored results cannot be used as given."""
