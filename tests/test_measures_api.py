"""The registry's calling convention: lookup, options, results, and errors on bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tests.symmetries import check_label_errors, labelled_data, network

import minsharp
from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.measures import Evaluation, available, measure, registry, spec
from minsharp.measures.perturbation import ADAPTIVE_RHO


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
    assert result.options == {
        "symmetry": "layer",
        "curvature": "hessian",
        "batch_size": 5,
        "progress": False,
        "seed": 0,
    }
    assert result.seconds > 0
    assert result.num_examples == 12
    assert result.invariances == ("layer",)
    assert result.certificate["max_relative_imbalance"] <= 1e-10
    neuron = minsharp.measure("minimum_sharpness", model, data, symmetry="neuron")
    assert neuron.invariances == ("layer", "neuron")
    assert neuron.value <= result.value * (1 + 1e-12)
    assert sum(result.per_layer.values()) == pytest.approx(result.value, rel=1e-12)
    json.dumps(result.to_dict())


def test_options_the_measure_settles_are_recorded_at_the_value_used() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    data = labelled_data("mlp", 0)
    for norm, rho in ADAPTIVE_RHO.items():
        result = measure("adaptive_sharpness", model, data, norm=norm, steps=1)
        assert result.options["rho"] == rho == result.details["rho"]
    assert measure("adaptive_sharpness", model, data, rho=0.01, steps=1).options["rho"] == 0.01
    result = measure("relative_flatness", model, data)
    assert result.options["layer"] == "4" == result.details["layer"]
    # The recorded options reproduce the value.
    assert measure("relative_flatness", model, data, **result.options).value == result.value


@pytest.mark.parametrize("name", available())
def test_no_measure_records_an_unresolved_default(name: str) -> None:
    batchnorm = "batchnorm" in spec(name).requires
    model = network("mlp", batchnorm=batchnorm, seed=0)
    quick = {"samples": 2, "steps": 1, "max_iterations": 3}
    options = {key: value for key, value in quick.items() if key in spec(name).defaults}
    if name == "pac_bayes_flatness":
        options["metric"] = "loss"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # iteration caps reached on purpose
        result = measure(name, model, labelled_data("mlp", 0), **options)
    assert None not in result.options.values(), result.options


def test_unknown_measure_suggests_close_names() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with pytest.raises(MinsharpError, match="Did you mean minimum_sharpness"):
        measure("minimum_sharpnes", model, labelled_data("mlp", 0))
    with pytest.raises(MinsharpError, match=r"Available measures: .*hessian_trace"):
        spec("no such thing")


def test_unknown_option_lists_the_accepted_ones() -> None:
    model = network("mlp", batchnorm=False, seed=0)
    with pytest.raises(
        MinsharpError, match=r"no option 'epochs'.*curvature='hessian'.*batch_size=None"
    ):
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
        check_label_errors(
            lambda data, name=name, model=model: measure(name, model, data), "mlp", 0
        )
        with pytest.raises(DataError, match="labels must be integer class indices"):
            measure(name, model, (inputs, labels.double()))
        with pytest.raises(DataError, match=r"got torch\.bool"):  # not read as 0/1 class indices
            measure(name, model, (inputs, labels > 0))


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
