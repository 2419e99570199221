"""The registry's calling convention: lookup, options, results, and errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from tests.symmetries import labelled_data, network

import minsharp
from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.measures import Evaluation, available, measure, registry, spec


def test_available_lists_the_measures_sorted() -> None:
    names = available()
    assert names == sorted(names)
    assert {"minimum_sharpness", "hessian_trace"} <= set(names)
    assert minsharp.available() == names


def test_result_records_options_time_and_invariances() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    data = labelled_data("mlp", 0)
    result = minsharp.measure("minimum_sharpness", model, data, batch_size=5)
    direct = minsharp.minimum_sharpness(model, data)
    assert result.value == pytest.approx(direct.value, rel=1e-12)
    assert result.options == {"batch_size": 5, "progress": False, "seed": 0}
    assert result.seconds > 0
    assert result.num_examples == 12
    assert result.invariances == ("layer",)
    assert result.certificate["relative_gradient_norm"] < 1e-10
    assert sum(result.per_layer.values()) == pytest.approx(result.value, rel=1e-12)
    json.dumps(result.to_dict())


def test_unknown_measure_suggests_close_names() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with pytest.raises(MinsharpError, match="Did you mean minimum_sharpness"):
        measure("minimum_sharpnes", model, labelled_data("mlp", 0))
    with pytest.raises(MinsharpError, match=r"Available measures: .*hessian_trace"):
        spec("no such thing")


def test_unknown_option_lists_the_accepted_ones() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with pytest.raises(MinsharpError, match=r"no option 'epochs'.*batch_size=256"):
        measure("hessian_trace", model, labelled_data("mlp", 0), epochs=3)


def test_batchnorm_measures_refuse_networks_without_batchnorm() -> None:
    needing = [name for name in available() if "batchnorm" in spec(name).requires]
    model = network("mlp", batchnorm=False, seed=0)
    for name in needing:
        with pytest.raises(ModelError, match="needs a network with batch-norm"):
            measure(name, model, labelled_data("mlp", 0))


def test_label_measures_refuse_unlabelled_data_and_bad_labels() -> None:
    needing = [name for name in available() if "labels" in spec(name).requires]
    assert needing
    inputs, labels = labelled_data("mlp", 0)
    for name in needing:
        model = network("mlp", batchnorm="batchnorm" in spec(name).requires, seed=0)
        with pytest.raises(DataError, match="depends on the labels"):
            measure(name, model, inputs)
        with pytest.raises(DataError, match="out of range"):
            measure(name, model, (inputs, labels + 3))
        with pytest.raises(DataError, match="integer tensor"):
            measure(name, model, (inputs, labels.double()))


def test_non_finite_weights_are_refused_by_every_measure() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    for name in available():
        if "batchnorm" in spec(name).requires:
            continue
        with pytest.raises(ModelError, match="non-finite"):
            measure(name, model, labelled_data("mlp", 0))


def test_a_non_finite_value_is_an_error_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    def overflowing(model: torch.nn.Module, data: object) -> Evaluation:
        """A measure whose value overflows, standing in for a numerically broken one."""
        return Evaluation(value=float("inf"), num_examples=1)

    fake = registry.MeasureSpec(
        name="overflowing",
        compute=overflowing,
        invariances=frozenset(),
        requires=frozenset(),
        summary="test",
        reference="test",
        stochastic=False,
    )
    monkeypatch.setitem(registry._REGISTRY, "overflowing", fake)
    with pytest.raises(ModelError, match="non-finite"):
        measure("overflowing", network("mlp", batchnorm=False, seed=0), labelled_data("mlp", 0))
