import pytest

from minsharp.cli.main import main


def test_demo_runs_the_study_and_prints_the_correlations(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny = ["--epochs", "2", "--hidden", "8", "--ratios", "0,1", "--seeds", "0,1", "--threads", "1"]
    assert main(["demo", *tiny, "--train-size", "100", "--resamples", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for text in ("4 runs trained", "Kendall τ-b", "minimum_sharpness", "epsilon_sharpness"):
        assert text in out
    assert "report: minsharp-demo/report.md" in out
    assert (tmp_path / "minsharp-demo" / "report.md").is_file()


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["nonsense"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
