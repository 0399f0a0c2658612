"""The local runner's own pieces: its log on a full disk (Linux's /dev/full answers every write with
ENOSPC, as a full TLPIPE_HOME does), the sentence a full disk becomes, and what a resume reads."""

import errno
import io
import os
import re
import time
from pathlib import Path

import pytest

from tlpipe.errors import TlpipeError, as_user_error
from tlpipe.local import _LogView

STEP_FAILED = "\x1b[31mtlpipe: error: the MLflow store refused the step's run (database or disk is full)\x1b[0m\n"


def test_a_log_on_a_full_disk_keeps_the_run_on_screen_and_says_why_it_is_incomplete():
    terminal = io.StringIO()
    view = _LogView(terminal, open("/dev/full", "w"), verbose=False)
    for epoch in range(400):  # more than the file's buffer: the disk refuses during the run, not only at its end
        view.write(f"[pretrain] epoch {epoch} loss 0.1 " + "x" * 40 + "\n")
    view.write(STEP_FAILED)
    view.flush()
    said = view.close_log(Path("/home/user/.tlpipe/logs/transfer-1.log"))
    assert said == "the log /home/user/.tlpipe/logs/transfer-1.log is incomplete: no space left on device at /home/user/.tlpipe/logs"
    shown = terminal.getvalue().splitlines()
    # The step's own sentence still reaches the user, without colour codes off a terminal (a pipe, a CI log).
    assert len(shown) == 401 and shown[-1] == "tlpipe: error: the MLflow store refused the step's run (database or disk is full)"


def test_a_log_with_room_is_complete(tmp_path):
    view = _LogView(io.StringIO(), open(tmp_path / "run.log", "w"), verbose=False)
    view.write("Executing task 'ingest'\n")
    assert view.close_log(tmp_path / "run.log") == ""
    assert (tmp_path / "run.log").read_text() == "Executing task 'ingest'\n"


def test_a_full_disk_is_one_sentence_naming_the_file():
    try:
        with open("/dev/full", "w") as full:
            full.write("x")
    except OSError as error:
        error.filename = "/home/user/.tlpipe/reports/transfer-1.html"  # as shutil.copyfile reports it
        said = str(as_user_error(error))
    assert said.startswith("no space left on the disk writing /home/user/.tlpipe/reports/transfer-1.html "
                           "(No space left on device)")
    assert as_user_error(OSError(errno.ENOENT, "No such file or directory", "x")) is None  # not a user's mistake


def test_a_run_is_recorded_for_its_resume_and_an_unknown_or_malformed_id_is_one_sentence(tlpipe_home):
    from tlpipe import resume, settings

    resume.record(settings.pipeline_root() / "transfer-1", "transfer", {"seed": "3"})
    assert resume.recorded("transfer-1") == ("transfer", {"seed": "3"})
    with pytest.raises(TlpipeError, match="run transfer-2 cannot be resumed: .* holds no run of that id"):
        resume.recorded("transfer-2")
    with pytest.raises(TlpipeError, match="'../transfer-1' is not a run id"):
        resume.recorded("../transfer-1")


def test_a_resume_on_data_that_changed_since_the_run_started_is_refused(tlpipe_home):
    from tlpipe import resume, settings

    answer = settings.pipeline_root() / "transfer-1" / "tlpipe-transfer-2026-12-02-18-36-36-692175" / "data-version"
    answer.mkdir(parents=True)
    (answer / "executor_output.json").write_text('{"parameterValues": {"Output": "{\\"source\\": \\"a@1\\"}"}}')
    resume.check_data_unchanged("transfer-1", '{"source": "a@1"}')
    with pytest.raises(TlpipeError, match="run transfer-1 cannot be resumed: its data changed since it started"):
        resume.check_data_unchanged("transfer-1", '{"source": "a@2"}')


def test_checkpoints_nobody_resumed_for_a_week_are_removed_and_recent_ones_kept(tmp_path):
    from tlpipe import resume

    home, users = tmp_path / "checkpoints", tmp_path / "my-checkpoints"  # the default place, a checkpoint_root given
    old = home / "transfer-20261101-101010-a1b2c3" / "pretrain"
    recent = home / "transfer-20261201-101010-d4e5f6" / "pretrain"
    old_there = users / "retrain-20261101-101010-0a0b0c" / "adapt"
    not_a_run = users / "photos" / "class_a"  # the user's own folder, as old
    for folder in (old, recent, old_there, not_a_run):
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"x")
    week_ago = time.time() - 8 * 86400
    for folder in (old, old_there, not_a_run):
        for path in (folder / "checkpoint.pt", folder, folder.parent):
            os.utime(path, (week_ago, week_ago))
    assert resume.expire_checkpoints(home, users) == ["transfer-20261101-101010-a1b2c3", "retrain-20261101-101010-0a0b0c"]
    assert not old.parent.exists() and not old_there.parent.exists()
    assert (recent / "checkpoint.pt").exists() and (not_a_run / "checkpoint.pt").exists()


def test_resume_takes_the_runs_own_parameters(capsys):
    from tlpipe.cli import main

    assert main(["run", "--resume", "transfer-1", "-p", "seed=1"]) == 2
    assert "give neither a pipeline nor -p with it" in capsys.readouterr().err


def test_the_steps_notes_reach_the_terminal_and_colour_only_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    note = "[ingest] tlpipe: note: target_val_per_class=10: classes a have fewer held-out images\n"
    piped, terminal = io.StringIO(), Terminal()
    for out in (piped, terminal):
        view = _LogView(out, open(tmp_path / "run.log", "w"), verbose=False)
        view.write("\x1b[32mINFO\x1b[0m:root:a line only the log keeps\n" + note + STEP_FAILED)
        view.close_log(tmp_path / "run.log")
    assert piped.getvalue().splitlines() == [note.strip(), STEP_FAILED.strip().replace("\x1b[31m", "").replace("\x1b[0m", "")]
    assert terminal.getvalue().splitlines() == [note.strip(), STEP_FAILED.strip()]


def test_kfp_task_lines_become_one_short_line_each_unless_verbose(tmp_path):
    kfp = ("03:50:56.401 - INFO - Executing task \x1b[96m'predict'\x1b[0m\n"
           "03:50:56.402 - INFO - Streamed logs:\n"
           "03:51:04.547 - INFO - Task \x1b[96m'predict'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
           "03:51:08.479 - INFO - Pipeline \x1b[95m'tlpipe-predict'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    brief, verbose = io.StringIO(), io.StringIO()
    for out, is_verbose in ((brief, False), (verbose, True)):
        view = _LogView(out, open(tmp_path / "run.log", "w"), verbose=is_verbose)
        view.write(kfp)
        view.close_log(tmp_path / "run.log")
    lines = brief.getvalue().splitlines()
    assert lines[0] == "03:50:56 predict ..." and lines[2] == "03:51:08 pipeline tlpipe-predict SUCCESS"
    assert re.fullmatch(r"03:51:04 predict SUCCESS in \d+\.\d s", lines[1]) and len(lines) == 3
    assert verbose.getvalue().splitlines()[0] == "03:50:56.401 - INFO - Executing task 'predict'"
    assert (tmp_path / "run.log").read_text() == kfp  # the log keeps kfp's own lines


def test_a_run_that_failed_after_evaluate_prints_its_table_and_report(tlpipe_home, monkeypatch, capsys):
    """register failed: evaluate's evaluation and report are in the run's folder; `tlpipe run` prints the
    table and the report's path before the one sentence, and still exits 2."""
    from tlpipe import local
    from tlpipe.cli import main
    from tlpipe.evaluate import Evaluation, Result

    attempt = tlpipe_home / "pipeline-root" / "transfer-1" / "tlpipe-transfer-2026-12-04-03-00-00-000000"
    (attempt / "evaluate").mkdir(parents=True)
    results = [Result("source-only", "baseline", 0.5, {}, [[1, 1], [1, 1]], val_accuracy=0.5),
               Result("adapted", "candidate", 0.75, {}, [[2, 0], [1, 1]], val_accuracy=0.8)]
    Evaluation(results, "adapted", ["a", "b"], "sha256:0", 4, chance=0.5, val_count=10).save(attempt / "evaluate" / "evaluation")
    (attempt / "evaluate" / "report").write_text("<html>evaluate's report</html>")
    failed = local._collected("transfer-1", attempt.parent, tlpipe_home / "logs" / "transfer-1.log", 1.0, [])
    assert failed.evaluation.best == "adapted" and failed.registration is None
    assert failed.report.read_text() == "<html>evaluate's report</html>"

    def run(*args, **kwargs):
        raise local.RunFailed("the MLflow server stopped answering in register", failed)

    monkeypatch.setattr(local, "run", run)
    assert main(["run"]) == 2
    out, err = capsys.readouterr()
    assert "the run failed after evaluate; what it measured:" in out and "adapted        candidate" in out
    assert f"report (without the registry's section): {failed.report}" in out
    assert err.strip() == "tlpipe: error: the MLflow server stopped answering in register"
