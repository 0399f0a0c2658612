"""The `tlpipe` command's own conventions: --version, an example in every command's help (each one
parses), the stack's actions described, and `schedule list` / `delete` without the compile options."""

import shlex

import pytest

from tlpipe.cli import EXAMPLES, build_parser, main, routed


def test_version_names_tlpipe_and_the_libraries_it_runs_on(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("tlpipe 0.") and "torch 2.14.1" in out and "kfp 2.17" in out


def test_every_command_ends_its_help_with_examples_that_parse():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(EXAMPLES)
    for name, command in commands.items():
        assert "\nexamples:\n  " in command.format_help(), name
        for example in EXAMPLES[name]:
            words = shlex.split(example)
            if words[0] == "tlpipe":
                parsed = parser.parse_args(routed(words[1:]))
                assert parsed.command == name, example


def test_schedule_list_and_delete_take_server_options_only(capsys):
    for action in ("list", "delete"):
        with pytest.raises(SystemExit):
            main(["schedule", action, "--help"])
        shown = capsys.readouterr().out
        assert f"usage: tlpipe schedule {action}" in shown and "--host" in shown
        assert "--gpus" not in shown and "--image" not in shown and "-p NAME=VALUE" not in shown
    with pytest.raises(SystemExit) as missing:
        main(["schedule", "delete"])
    assert missing.value.code == 2 and "the following arguments are required: id" in capsys.readouterr().err


def test_the_stack_command_says_what_each_action_does(capsys):
    with pytest.raises(SystemExit):
        main(["stack", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for action in ("up: start SeaweedFS (S3) and the MLflow server", "down: stop them", "status:", "env: the export lines"):
        assert action in shown
