"""Sharpness measures built on the curvature engine."""

from minsharp.measures.minimum_sharpness import (
    MinimumSharpness,
    ScaleSolution,
    minimum_sharpness,
    solve_scales,
)

__all__ = ["MinimumSharpness", "ScaleSolution", "minimum_sharpness", "solve_scales"]
