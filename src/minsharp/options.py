"""Checks of option values, shared by every measure, solver and loader.

Each check returns the value when it is valid and otherwise raises :class:`MinsharpError` (or
the subclass given as ``error``) with one message form that names the option, the values it
accepts and the value it got::

    steps must be a positive integer; got 0.
    delta must be a number in (0, 1] (the integration radius relative to each block's norm); got 2.

Booleans are refused where numbers are expected (``True`` is not a step count).

Example:
    >>> integer("nodes", 8, minimum=1, maximum=64)
    8
    >>> number("delta", 1.5, above=0, at_most=1)
    Traceback (most recent call last):
    ...
    minsharp.errors.MinsharpError: delta must be a number in (0, 1]; got 1.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

from torch import nn

from minsharp.errors import MinsharpError, ModelError

T = TypeVar("T")


def integer(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    why: str = "",
    error: type[MinsharpError] = MinsharpError,
) -> int:
    """``value`` if it is an integer (not a bool) in ``[minimum, maximum]``; raise otherwise."""
    valid = isinstance(value, int) and not isinstance(value, bool)
    if valid and minimum is not None and value < minimum:
        valid = False
    if valid and maximum is not None and value > maximum:
        valid = False
    if not valid:
        if minimum is not None and maximum is not None:
            accepted = f"an integer from {minimum} to {maximum}"
        elif minimum == 1:
            accepted = "a positive integer"
        elif minimum == 0:
            accepted = "a non-negative integer"
        elif minimum is not None:
            accepted = f"an integer ≥ {minimum}"
        elif maximum is not None:
            accepted = f"an integer ≤ {maximum}"
        else:
            accepted = "an integer"
        raise _refusal(name, accepted, value, why, error)
    return value


def number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    why: str = "",
    error: type[MinsharpError] = MinsharpError,
) -> float:
    """``value`` if it is a finite real number (int or float, not a bool) within the bounds.

    ``above``/``at_least`` give an open/closed lower bound, ``below``/``at_most`` an
    open/closed upper bound (at most one of each pair).
    """
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = (
            (above is None or value > above)
            and (at_least is None or value >= at_least)
            and (below is None or value < below)
            and (at_most is None or value <= at_most)
        )
    if not valid:
        raise _refusal(name, _interval(above, at_least, below, at_most), value, why, error)
    return value


def boolean(name: str, value: Any, *, error: type[MinsharpError] = MinsharpError) -> bool:
    """``value`` if it is ``True`` or ``False``; raise otherwise."""
    if not isinstance(value, bool):
        raise _refusal(name, "True or False", value, "", error)
    return value


def nn_module(name: str, value: Any, *, error: type[MinsharpError] = ModelError) -> nn.Module:
    """``value`` if it is a ``torch.nn.Module``; raise naming its type otherwise."""
    if not isinstance(value, nn.Module):
        raise error(f"{name} must be a torch.nn.Module; got a {type(value).__name__}.")
    return value


def choice(
    name: str,
    value: Any,
    allowed: Sequence[T],
    *,
    why: str = "",
    error: type[MinsharpError] = MinsharpError,
) -> T:
    """``value`` if it is one of ``allowed``; raise listing them otherwise."""
    if isinstance(value, (str, int, float)) and value in allowed:
        return value  # type: ignore[return-value]
    listed = [repr(option) for option in allowed]
    accepted = " or ".join(listed) if len(listed) <= 2 else f"one of {', '.join(listed)}"
    raise _refusal(name, accepted, value, why, error)


def _interval(
    above: float | None, at_least: float | None, below: float | None, at_most: float | None
) -> str:
    """How the accepted range reads, e.g. ``a number in (0, 1]`` or ``a finite number > 0``."""
    low = f"({above:g}" if above is not None else f"[{at_least:g}" if at_least is not None else ""
    high = f"{below:g})" if below is not None else f"{at_most:g}]" if at_most is not None else ""
    if low and high:
        return f"a number in {low}, {high}"
    bounds = [
        f"{symbol} {bound:g}"
        for symbol, bound in ((">", above), ("≥", at_least), ("<", below), ("≤", at_most))
        if bound is not None
    ]
    return " ".join(["a finite number", *bounds])


def _refusal(
    name: str, accepted: str, value: Any, why: str, error: type[MinsharpError]
) -> MinsharpError:
    reason = f" ({why})" if why else ""
    return error(f"{name} must be {accepted}{reason}; got {value!r}.")
