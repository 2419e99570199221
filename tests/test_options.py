"""The shared option checks: what they accept, and the one message form of a refusal."""

from __future__ import annotations

import math

import pytest

from minsharp.errors import DataError, MinsharpError
from minsharp.options import boolean, choice, integer, number


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (lambda v: integer("seed", v), 1.0, "seed must be an integer; got 1.0."),
        (lambda v: integer("steps", v, minimum=1), 0, "steps must be a positive integer; got 0."),
        (lambda v: integer("steps", v, minimum=1), True, "steps must be a positive integer"),
        (lambda v: integer("cap", v, minimum=0), -1, "cap must be a non-negative integer"),
        (lambda v: integer("samples", v, minimum=2, why="two at least"), 1, "≥ 2 (two at least)"),
        (lambda v: integer("nodes", v, minimum=1, maximum=64), 65, "an integer from 1 to 64"),
        (lambda v: number("rho", v, above=0), math.inf, "rho must be a finite number > 0"),
        (lambda v: number("offset", v, at_least=0), -1, "offset must be a finite number ≥ 0"),
        (lambda v: number("tolerance", v, above=0, below=1), 1.0, r"a number in (0, 1); got 1.0"),
        (lambda v: number("delta", v, above=0, at_most=1), math.nan, "a number in (0, 1]"),
        (lambda v: number("ratio", v, at_least=0, at_most=1), "0.5", "a number in [0, 1]"),
        (lambda v: number("ratio", v, at_least=0, at_most=1), False, "a number in [0, 1]"),
        (lambda v: boolean("flag", v), 1, "flag must be True or False; got 1."),
        (lambda v: choice("norm", v, ("inf", "2")), "1", "norm must be 'inf' or '2'; got '1'."),
        (lambda v: choice("kind", v, ("a", "b", "c")), ["a"], "one of 'a', 'b', 'c'; got ['a']"),
    ],
)
def test_refusals_name_the_option_the_accepted_values_and_the_value(check, value, message):
    with pytest.raises(MinsharpError) as raised:
        check(value)
    assert message in str(raised.value)


def test_valid_values_pass_through_and_the_error_class_is_chosen():
    assert integer("n", 3, minimum=1, maximum=3) == 3
    assert number("x", 1, above=0, at_most=1) == 1
    assert boolean("b", False) is False
    assert choice("c", "icml", ("arxiv", "icml")) == "icml"
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        integer("batch_size", 0, minimum=1, error=DataError)
