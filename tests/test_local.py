"""The local runner's own pieces: its log on a full disk (Linux's /dev/full answers every write with
ENOSPC, as a full TLPIPE_HOME does) and the sentence a full disk becomes."""

import errno
import io
from pathlib import Path

from tlpipe.errors import as_user_error
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
    assert len(shown) == 401 and shown[-1] == STEP_FAILED.strip()  # the step's own sentence still reaches the user


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
