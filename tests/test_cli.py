import pytest

from minsharp.cli import main


def test_demo_prints_the_table(capsys):
    assert main(["demo", "--epochs", "3", "--hidden", "16", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("Tr H_W", "Minimum Sharpness", "alpha*", "certificate", "time"):
        assert text in out


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["nonsense"])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
