"""An interrupted or killed `tlpipe run`: one sentence, its MLflow runs closed, no step left running, and
`tlpipe run --resume` finishes it from its checkpoint."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import mlflow
import psutil
import pytest

from tlpipe import local

pytestmark = pytest.mark.e2e

# Long enough a pretrain that the run is surely inside it when it is stopped.
LONG = ["source_epochs=200", "finetune_epochs=1", "adapt_epochs=1", "target_labels_per_class=5"]


class Run:
    """`tlpipe run` in the background, its output read as it comes."""

    def __init__(self, home, args=None):
        self.home, self.tmp = home, home.parent / "tmp"  # TMPDIR: what the run and its steps leave there
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env |= {"TLPIPE_HOME": str(home), "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp)}  # lines as they come
        args = args or [a for p in LONG for a in ("-p", p)]
        # As a terminal starts a command: Ctrl-C's SIGINT not ignored, even where the tests themselves run
        # as a background job (a shell starts those with SIGINT ignored, and children inherit that).
        self.process = subprocess.Popen([sys.executable, "-m", "tlpipe.cli", "run", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.pid, self.out, self.err = self.process.pid, [], []
        self.readers = [threading.Thread(target=lambda s=s, into=into: into.extend(s), daemon=True)
                        for s, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = [f"{p.pid} {p.status()} {' '.join(p.cmdline())[:150]}"
                    for p in [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]]
            self.process.kill()
            pytest.fail(f"tlpipe run did not end in {timeout} s; its processes: {tree}; "
                        f"out: {''.join(self.out)[-1500:]} err: {''.join(self.err)[-3000:]}")
        for reader in self.readers:
            reader.join(timeout=10)
        return code, "".join(self.err)


def pretraining_steps(run: Run, timeout: float = 240) -> list[psutil.Process]:
    """The processes under `tlpipe run` once its pretrain step is training and has saved a checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list((run.home / "checkpoints").glob("*/pretrain/checkpoint.pt")):  # however loaded the machine is
            steps = [p for p in psutil.Process(run.pid).children(recursive=True) if "executor_main" in " ".join(p.cmdline())]
            assert steps
            return steps
        time.sleep(0.5)
    run.process.kill()
    pytest.fail(f"the pretrain step did not start training in time: {''.join(run.out)[-1500:]} {''.join(run.err)[-1500:]}")


def gone(processes: list[psutil.Process], timeout: float = 15) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def runs(home) -> list:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def left_behind(run: Run) -> dict[str, list[str]]:
    """What the run left on disk apart from its log and the MLflow store: KFP outputs, checkpoints, scratch."""
    places = {"outputs": run.home / "pipeline-root", "checkpoints": run.home / "checkpoints", "scratch": run.tmp}
    return {name: sorted(p.name for p in place.iterdir()) if place.exists() else [] for name, place in places.items()}


def interrupted(run: Run, steps: list[psutil.Process], signum: int) -> str:
    """Stops the run with `signum` and checks how it ended: one sentence, runs KILLED, steps gone, no
    scratch left, its outputs and checkpoint kept for a resume; returns the run's id."""
    if signum == signal.SIGINT:  # Ctrl-C reaches the whole foreground process group
        for process in [psutil.Process(run.pid), *steps]:
            process.send_signal(signal.SIGINT)
    else:
        run.process.send_signal(signum)
    code, err = run.wait(timeout=120)
    assert code == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("tlpipe:")]
    assert len(lines) == 1 and "marked KILLED; `tlpipe run --resume transfer-" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert gone(steps)
    statuses = {r.data.tags.get("tlpipe.role"): r.info.status for r in runs(run.home)}
    assert statuses["pipeline"] == "KILLED"
    assert all(r.info.status != "RUNNING" for r in runs(run.home))
    run_id = re.search(r"interrupted; run (\S+) marked KILLED", lines[0]).group(1)
    assert left_behind(run) == {"outputs": [run_id], "checkpoints": [run_id], "scratch": []}
    return run_id


def test_ctrl_c_ends_a_run_in_one_sentence_killed(tmp_path):
    run = Run(tmp_path / "home")
    interrupted(run, pretraining_steps(run), signal.SIGINT)


def test_a_stopped_run_resumes_from_its_checkpoint_and_finishes(tmp_path):
    run = Run(tmp_path / "home", [a for p in ["source_epochs=12", *LONG[1:]] for a in ("-p", p)])  # it finishes
    run_id = interrupted(run, pretraining_steps(run), signal.SIGTERM)  # a `kill`, a stopping container

    again = Run(run.home, ["--resume", run_id])
    code, err = again.wait(timeout=540)
    out = "".join(again.out)
    assert code == 0, out[-2000:] + err[-2000:]
    assert f"resuming run {run_id} (transfer)" in out
    log = (run.home / "logs" / f"{run_id}.log").read_text()
    assert re.search(r"resuming from the checkpoint after epoch [1-9][0-9]*/12", log)  # pretrain's, not from 0
    executed = set(re.findall(r"^\d\d:\d\d:\d\d ([\w-]+) \.\.\.$", out, re.MULTILINE))
    assert "pretrain" in executed and "ingest" not in executed  # the finished step was a cache hit
    [parent] = [r for r in runs(run.home) if r.data.tags.get("tlpipe.role") == "pipeline"]
    assert (parent.info.run_name, parent.info.status) == (run_id, "FINISHED")
    assert {r.info.status for r in runs(run.home)} == {"FINISHED"}
    assert f"report: {run.home / 'reports' / (run_id + '.html')}" in out
    assert left_behind(run)["checkpoints"] in ([], [run_id]) and not list((run.home / "checkpoints").rglob("*.pt"))


def test_a_killed_run_leaves_no_step_training_and_the_next_run_closes_it(tmp_path, monkeypatch, capsys):
    run = Run(tmp_path / "home")
    steps = pretraining_steps(run)
    run.process.kill()  # SIGKILL: tlpipe run itself can do nothing
    run.wait(timeout=60)
    assert gone(steps), "a step outlived the tlpipe run that started it"
    [parent] = [r for r in runs(run.home) if r.data.tags.get("tlpipe.role") == "pipeline"]
    assert parent.info.status == "RUNNING"

    # What the next `tlpipe run` on this machine does before it starts.
    monkeypatch.setenv("TLPIPE_HOME", str(run.home))
    monkeypatch.setattr(tempfile, "tempdir", str(run.tmp))  # the same TMPDIR as the killed run
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    try:
        local._close_abandoned()
    finally:
        mlflow.set_tracking_uri(None)
    said = capsys.readouterr().out
    assert f"run {parent.info.run_name} was left RUNNING by a tlpipe run that is gone; marked KILLED" in said
    assert {r.info.status for r in runs(run.home) if r.data.tags.get("tlpipe.role") == "pipeline"} == {"KILLED"}
    assert all(r.info.status != "RUNNING" for r in runs(run.home))
    assert left_behind(run)["scratch"] == []  # its outputs and checkpoints stay, for `tlpipe run --resume`
