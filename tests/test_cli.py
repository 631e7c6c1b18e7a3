"""The CLI: fast help without torch, errors as messages with exit code 2."""

import subprocess
import sys

import pytest

from chattune.cli import build_parser, main


def test_help_does_not_import_torch():
    code = "import sys; from chattune.cli import main\ntry:\n main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert "train" in out and "chat" in out


@pytest.mark.parametrize("command", ["train", "chat", "demo", "config"])
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "configs/demo.yaml", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 1.0" in out and "name: Tuna" in out


def test_config_error_is_a_message_not_a_traceback(capsys):
    assert main(["train", "configs/demo.yaml", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epoch'" in err and "Traceback" not in err


def test_parser_lists_commands():
    text = build_parser().format_help()
    for command in ("train", "chat", "demo"):
        assert command in text


def test_overrides_after_an_option_are_still_overrides(monkeypatch):
    """`chattune train CONFIG --resume auto key=value`: the override is kept, not a bare argparse error."""
    from chattune import cli, commands

    seen = {}
    monkeypatch.setattr(commands, "run_command", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["train", "configs/demo.yaml", "--resume", "auto", "train.epochs=1", "lora.r=4"]) == 0
    assert seen["resume"] == "auto" and seen["overrides"] == ["train.epochs=1", "lora.r=4"]
    with pytest.raises(SystemExit):
        cli.main(["train", "configs/demo.yaml", "--resume", "auto", "stray"])
