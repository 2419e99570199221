"""`minsharp study` refusals and resumes: flags checked first, full differences, checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from minsharp.cli.main import main
from minsharp.cli.study import _seeds
from minsharp.errors import StudyError
from minsharp.study.core import store
from minsharp.study.randomized_labels.config import preset
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS
from minsharp.training.checkpoint import WEIGHTS_FILE, verify_checkpoint

#: One run of a four-unit MLP for one epoch on 60 digits: a study in about a second.
TINY = [
    *("study", "randomized-labels", "--ratios", "0", "--seeds", "0", "--hidden", "4"),
    *("--train-size", "60", "--test-size", "30", "--epochs", "1"),
    *("--measures", "hessian_trace", "--threads", "1", "--no-progress", "--no-report"),
]


def study(capsys, directory: Path, *extra: str) -> tuple[int, str, str]:
    code = main([*TINY, "--output", str(directory), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_reversed_seed_range_says_so_and_what_to_write():
    with pytest.raises(StudyError, match=r"--seeds 3-1: the range is reversed.*write 1-3"):
        _seeds("3-1")
    assert _seeds("0,2-4,7") == [0, 2, 3, 4, 7]
    assert _seeds("5-5") == [5]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "3-1"], "the range is reversed"),
        (["--epochs", "0"], "--epochs must be a positive integer; got 0"),
        (["--measure-examples", "100"], "--measure-examples"),
    ],
)
def test_bad_flags_are_refused_and_leave_no_directory(capsys, tmp_path, flags, message):
    directory = tmp_path / "study"
    code, _, err = study(capsys, directory, *flags)
    assert code == 2
    assert message in err
    assert not directory.exists()  # not even a directory holding only a .lock


def test_measure_examples_beyond_the_training_set_names_the_flag_and_the_limit(capsys, tmp_path):
    code, _, err = study(capsys, tmp_path / "study", "--measure-examples", "100")
    assert code == 2
    assert "measure_examples (--measure-examples) is 100" in err
    assert "holds 60 examples; give at most 60" in err


def test_a_failed_start_in_an_existing_directory_keeps_the_directory(capsys, tmp_path):
    directory = tmp_path / "mine"
    directory.mkdir()
    code, _, _ = study(capsys, directory, "--measure-examples", "100")
    assert code == 2
    assert directory.is_dir() and list(directory.iterdir()) == []


def test_the_mismatch_error_lists_each_differing_setting_in_full(tmp_path):
    config = preset("demo")
    previous = {"kind": RANDOMIZED_LABELS.name, "config": config.to_dict()}
    seeds = tuple(range(40))
    changed = dataclasses.replace(
        config,
        seeds=seeds,
        training={**config.training, "epochs": 7},
        models=(dataclasses.replace(config.models[0], options={"hidden": [5, 6]}),),
    )
    with pytest.raises(StudyError) as caught:
        store.check_same_config(tmp_path, previous, changed, RANDOMIZED_LABELS)
    message = str(caught.value)
    assert "…" not in message and "more" not in message
    old_epochs = config.training["epochs"]
    old_hidden = json.dumps(config.models[0].options["hidden"])
    assert f"training.epochs: {old_epochs} → 7" in message
    assert f"models[0].options.hidden: {old_hidden} → [5, 6]" in message
    assert f"seeds: {json.dumps(list(config.seeds))} → {json.dumps(list(seeds))}" in message


def test_differences_name_added_and_removed_settings():
    assert store.differences({"a": {"b": 1}}, {"a": {"c": 2}}) == [
        "a.b: 1 → (absent)",
        "a.c: (absent) → 2",
    ]
    assert store.differences([1, 2], [1, 2, 3]) == ["value: [1, 2] → [1, 2, 3]"]


def test_a_corrupted_checkpoint_is_noticed_on_resume_and_its_run_redone(capsys, tmp_path):
    directory = tmp_path / "study"
    code, out, err = study(capsys, directory)
    assert code == 0, err
    [run] = json.loads((directory / store.STUDY_FILE).read_text())["runs"]
    checkpoint = directory / store.RUNS_DIR / run / store.CHECKPOINT_DIR
    weights = checkpoint / WEIGHTS_FILE
    payload = bytearray(weights.read_bytes())
    payload[-2] ^= 0x10  # a bit of the last weight: the file still parses
    weights.write_bytes(bytes(payload))

    code, out, err = study(capsys, directory)
    assert code == 0, err
    assert f"redoing {run}: its checkpoint is unusable" in out
    assert "does not match checkpoint" in out
    assert "1 runs trained, 0 reused" in out
    verify_checkpoint(checkpoint)  # written anew, whole

    code, out, _ = study(capsys, directory)
    assert code == 0 and "0 runs trained, 1 reused" in out


def test_a_config_file_without_an_epoch_to_train_is_refused(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"training": {"epochs": 0}}))
    code, _, err = study(capsys, tmp_path / "study", "--config", str(config))
    assert code == 2
    assert "epochs must be a positive integer; got 0" in err
