"""Training (schedule, determinism, early stop, history) and checkpoints (minsharp.training)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.models import build_model
from minsharp.training import (
    CHECKPOINT_FILE,
    WEIGHTS_FILE,
    TrainingConfig,
    TrainingHistory,
    accuracy,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    train_classifier,
)

SPEC = {"name": "mlp", "input_shape": [64], "num_classes": 4, "options": {"hidden": [32]}}


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def _model(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = {**SPEC, "options": {**SPEC["options"], **options}}
    return build_model(spec["name"], spec["input_shape"], spec["num_classes"], **spec["options"])


def test_same_seed_gives_bit_identical_weights_and_different_seeds_differ():
    inputs, labels = _data()
    config = TrainingConfig(epochs=3, batch_size=16, seed=7)
    first, second, third = _model(), _model(), _model()
    history = train_classifier(first, inputs, labels, config).as_dict()
    repeated = train_classifier(second, inputs, labels, config).as_dict()
    timings = {"seconds": None, "step_seconds": None}
    assert {**repeated, **timings} == {**history, **timings}
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    train_classifier(third, inputs, labels, TrainingConfig(epochs=3, batch_size=16, seed=8))
    assert not torch.equal(first[1].weight, third[1].weight)


def test_training_leaves_the_callers_random_state_alone():
    inputs, labels = _data()
    model = _model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(model, inputs, labels, TrainingConfig(epochs=1, batch_size=32))
    assert torch.equal(torch.rand(3), expected)


def test_schedule_values():
    config = TrainingConfig(lr=0.2, lr_decay=0.5)
    assert [learning_rate(config, t) for t in range(4)] == [0.2, 0.2 / 1.5, 0.2 / 2.0, 0.2 / 2.5]
    inputs, labels = _data(n=40)
    # 40 examples in batches of 16: 3 steps per epoch; epoch e ends with step 3(e + 1) − 1.
    history = train_classifier(
        _model(), inputs, labels, TrainingConfig(epochs=3, batch_size=16, lr=0.2, lr_decay=0.5)
    )
    assert history.learning_rate == [0.2 / (1 + 0.5 * t) for t in (2, 5, 8)]


def test_updates_follow_sgd_with_momentum_weight_decay_and_the_schedule():
    # Full batches make the order irrelevant; replay the paper's update by hand.
    inputs, labels = _data(n=32)
    config = TrainingConfig(
        epochs=4, batch_size=64, lr=0.1, momentum=0.9, weight_decay=0.01, lr_decay=0.5
    )
    trained, manual = _model(), _model()
    train_classifier(trained, inputs, labels, config)
    velocity = [torch.zeros_like(p) for p in manual.parameters()]
    for step in range(config.epochs):
        manual.zero_grad()
        F.cross_entropy(manual(inputs), labels).backward()
        with torch.no_grad():
            for parameter, v in zip(manual.parameters(), velocity, strict=True):
                gradient = parameter.grad + config.weight_decay * parameter
                v.mul_(config.momentum).add_(gradient)  # PyTorch: v₁ = g₁
                parameter.sub_(config.lr / (1 + config.lr_decay * step) * v)
    for a, b in zip(trained.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    undecayed = _model()
    train_classifier(
        undecayed, inputs, labels, TrainingConfig(**{**config.as_dict(), "lr_decay": 0.0})
    )
    assert not torch.allclose(undecayed[1].weight, trained[1].weight, atol=1e-4)


def test_history_fields():
    inputs, labels = _data()
    test = _data(n=50, seed=1)
    model = _model()
    history = train_classifier(
        model, inputs, labels, TrainingConfig(epochs=3, batch_size=32), test=test
    )
    assert history.epochs_run == 3 and not history.stopped_early
    for name in ("loss", "accuracy", "train_accuracy", "test_accuracy", "learning_rate", "seconds"):
        assert len(getattr(history, name)) == 3, name
    assert not model.training
    assert history.train_accuracy[-1] == accuracy(model, inputs, labels)
    assert history.test_accuracy[-1] == accuracy(model, *test)
    assert accuracy(model, inputs, labels, batch_size=7) == history.train_accuracy[-1]
    assert all(s > 0 for s in history.seconds) and history.loss[-1] < history.loss[0]
    assert json.loads(json.dumps(history.as_dict()))["epochs_run"] == 3
    untested = train_classifier(_model(), inputs, labels, TrainingConfig(epochs=2))
    assert untested.test_accuracy == [] and untested.epochs_run == 2
    assert train_classifier(_model(), inputs, labels, TrainingConfig(epochs=0)) == TrainingHistory()


def test_early_stop_at_target_training_accuracy():
    inputs, labels = _data(n=64)
    config = TrainingConfig(epochs=200, batch_size=16, lr=0.05, target_train_accuracy=0.9)
    model = _model()
    history = train_classifier(model, inputs, labels, config)
    assert history.stopped_early and history.epochs_run == len(history.loss) < 200
    assert history.train_accuracy[-1] >= 0.9 > max(history.train_accuracy[:-1])
    assert accuracy(model, inputs, labels) == history.train_accuracy[-1]
    reached = history.epochs_run
    exact = TrainingConfig(**{**config.as_dict(), "epochs": reached})
    again = train_classifier(_model(), inputs, labels, exact)
    assert again.epochs_run == reached and not again.stopped_early


def test_progress_bar_and_argument_checks(capsys):
    inputs, labels = _data(n=32)
    train_classifier(
        _model(),
        inputs,
        labels,
        TrainingConfig(epochs=2),
        progress=True,
        test=_data(n=8),
        description="demo run",
    )
    assert "demo run" in capsys.readouterr().err
    with pytest.raises(DataError, match="one class index per input"):
        train_classifier(_model(), inputs, labels[:-1], TrainingConfig(epochs=1))
    with pytest.raises(DataError, match="empty"):
        train_classifier(_model(), inputs[:0], labels[:0], TrainingConfig(epochs=1))
    with pytest.raises(MinsharpError, match=r"batch_size.*target_train_accuracy"):
        TrainingConfig(batch_size=0, target_train_accuracy=1.5)
    with pytest.raises(ModelError, match="diverged"):
        config = TrainingConfig(epochs=3, batch_size=8, lr=1e6)
        train_classifier(_model(), inputs, labels, config)


def _trained(tmp_path, **options):
    inputs, labels = _data()
    model = _model(**options)
    config = TrainingConfig(epochs=2, batch_size=32)
    history = train_classifier(model, inputs, labels, config)
    spec = {**SPEC, "options": {**SPEC["options"], **options}}
    record = {"config": config.as_dict(), "history": history.as_dict(), "note": float("nan")}
    save_checkpoint(tmp_path / "run", model, model_spec=spec, record=record)
    return model, inputs, record


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model, inputs, record = _trained(tmp_path, hidden=[16, 8], bias=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_FILE, WEIGHTS_FILE]
    torch.manual_seed(5)
    expected_draw = torch.rand(2)
    torch.manual_seed(5)
    loaded, loaded_record = load_checkpoint(tmp_path / "run")
    assert torch.equal(torch.rand(2), expected_draw)  # rebuilding used no caller randomness
    assert not loaded.training
    assert [m.out_features for m in loaded if hasattr(m, "out_features")] == [16, 8, 4]
    assert all(getattr(m, "bias", None) is None for m in loaded)
    assert torch.equal(loaded(inputs), model(inputs))
    assert loaded_record["config"] == record["config"]
    assert loaded_record["history"] == json.loads(json.dumps(record["history"]))
    assert loaded_record["note"] == "nan"
    content = json.loads((tmp_path / "run" / CHECKPOINT_FILE).read_text())
    assert content["model"] == {**SPEC, "options": {"hidden": [16, 8], "bias": False}}


def test_checkpoint_keeps_float64(tmp_path):
    model = _model().double()
    inputs = _data()[0].double()
    save_checkpoint(tmp_path, model, model_spec=SPEC, record={})
    loaded, record = load_checkpoint(tmp_path)
    assert record == {} and loaded[1].weight.dtype == torch.float64
    assert torch.equal(loaded(inputs), model(inputs))


def test_checkpoint_refuses_a_spec_that_does_not_rebuild_the_model(tmp_path):
    model = _model()
    with pytest.raises(ModelError, match="does not rebuild"):
        save_checkpoint(tmp_path, model, model_spec={**SPEC, "num_classes": 3}, record={})
    with pytest.raises(ModelError, match="unknown model"):
        save_checkpoint(tmp_path, model, model_spec={**SPEC, "name": "mpl"}, record={})
    with pytest.raises(ModelError, match="lacks num_classes"):
        save_checkpoint(tmp_path, model, model_spec={"name": "mlp", "input_shape": [64]}, record={})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_weights_give_an_error_naming_the_file(tmp_path, damage):
    _trained(tmp_path)
    path = tmp_path / "run" / WEIGHTS_FILE
    payload = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(payload[: len(payload) // 2])
    elif damage == "flip":
        path.write_bytes(payload[:-5] + bytes([payload[-5] ^ 1]) + payload[-4:])
    else:
        path.unlink()
    with pytest.raises(ModelError, match=str(path)):
        load_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate", "delete", "spec", "format"])
def test_damaged_checkpoint_json_gives_an_error_naming_the_file(tmp_path, damage):
    _trained(tmp_path)
    path = tmp_path / "run" / CHECKPOINT_FILE
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "delete":
        path.unlink()
    else:
        content = json.loads(text)
        if damage == "spec":
            content["model"]["num_classes"] = 5
        else:
            content["format"] = "other"
        path.write_text(json.dumps(content))
    with pytest.raises(ModelError, match=str(path) if damage != "spec" else "does not fit"):
        load_checkpoint(tmp_path / "run")


def test_checkpoint_overwrite_is_consistent(tmp_path):
    model, inputs, _ = _trained(tmp_path)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[1].weight.add_(1.0)
    save_checkpoint(tmp_path / "run", changed, model_spec=SPEC, record={"version": 2})
    loaded, record = load_checkpoint(tmp_path / "run")
    assert record == {"version": 2} and torch.equal(loaded(inputs), changed(inputs))
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("name", "shape"),
    [("small_mlp", [64]), ("paper_mlp", [64]), ("small_cnn", [1, 16, 16]), ("lenet", [2, 15, 17])],
)
def test_every_zoo_network_round_trips(tmp_path, name, shape):
    spec = {"name": name, "input_shape": shape, "num_classes": 3}
    torch.manual_seed(0)
    model = build_model(name, shape, 3)
    save_checkpoint(tmp_path, model, model_spec=spec, record={"name": name})
    loaded, record = load_checkpoint(tmp_path)
    inputs = torch.randn(4, *shape)
    assert record == {"name": name} and torch.equal(loaded(inputs), model(inputs))
