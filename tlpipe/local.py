"""Runs a pipeline on this machine with kfp.local (SubprocessRunner, in the current environment)."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

from tlpipe import preflight, resume, settings
from tlpipe.errors import ERROR_FILE_ENV, TlpipeError
from tlpipe.evaluate import Evaluation
from tlpipe.lifetime import PARENT_ENV, end_within
from tlpipe.registry import Registration
from tlpipe.steps.common import COMPUTE_MARK

# Where each pipeline's results are in its run folder (kfp.local writes <task>/<output>): Kubeflow allows no
# pipeline outputs from inside the exit handler (pipelines.closing_run), so they are looked up here.
# A run that failed after evaluate (in register) still has evaluate's report, without the gate's section.
RESULTS = {"report": ("register/report", "layer-sweep-report/report", "evaluate/report", "evaluate-retrain/report"),
           "evaluation": ("evaluate/evaluation", "evaluate-retrain/evaluation"),
           "registration": ("register/registration",), "sweep": ("layer-sweep-report/sweep",),
           "predictions": ("predict/predictions",)}


@dataclass
class StepTime:
    task: str
    wall: float  # from kfp.local starting the task to its end
    compute: float  # inside the step function (tlpipe.steps.common.timed)
    began: float = 0.0  # perf_counter at the start


@dataclass
class RunResult:
    run_id: str  # the pipeline run: the MLflow parent run's name, the report's and the log's file name
    report: Path | None  # the predict pipeline writes none
    log: Path
    seconds: float
    steps: list[StepTime]
    evaluation: Evaluation | None = None  # transfer and retrain
    registration: Registration | None = None
    sweep: list[dict] | None = None  # layer-sweep: its points
    predictions: Path | None = None  # predict: the folder of predictions.parquet and summary.json

    @property
    def sequential(self) -> bool:
        """Whether the steps ran one after another (a ParallelFor runs them side by side)."""
        steps = sorted(self.steps, key=lambda s: s.began)
        return all(b.began >= a.began + a.wall for a, b in zip(steps, steps[1:]))


class RunFailed(TlpipeError):
    """A run that failed in a step, in one sentence; `result` holds what it finished (the evaluation and its
    report, when evaluate did)."""

    def __init__(self, sentence: str, result: RunResult):
        super().__init__(sentence)
        self.result = result


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([\w-]+)'")
_COMPUTE = re.compile(re.escape(COMPUTE_MARK) + r" ([0-9.]+) s")
_KFP_INFO = re.compile(r"^(\d\d:\d\d:\d\d)\.\d+ - INFO - (.*)$")
_ENDED = re.compile(r"(Task|Pipeline) '([\w-]+)' finished with status (\w+)")


class _LogView(io.TextIOBase):
    """Sends the whole KFP log to a file and only task status, progress, the steps' notes and errors to
    the terminal, in colour only when it is one; times each task as its lines go by (kfp.local runs one
    task at a time). Without -v, kfp.local's INFO lines about tasks become one short line each."""

    SHOWN = ("Executing task", "finished with status", "] epoch ", "tlpipe: error", "tlpipe: note")

    def __init__(self, terminal, log_file, verbose: bool):
        self.terminal, self.log_file, self.verbose, self.pending = terminal, log_file, verbose, ""
        self.colour = terminal.isatty()
        self.log_error: OSError | None = None
        self.steps: list[StepTime] = []
        self.started: dict[str, list[float]] = {}
        self.compute = 0.0

    def write(self, text: str) -> int:
        if self.log_error is None:
            try:
                self.log_file.write(text)
            except OSError as error:  # a full disk: the run goes on, on the terminal; it ends with the reason
                self.log_error = error
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._time(line)
            if self.verbose or any(mark in line for mark in self.SHOWN):
                shown = line if self.verbose else self._brief(line)
                self.terminal.write((shown if self.colour else _COLOUR.sub("", shown)).strip() + "\n")
        return len(text)

    def _brief(self, line: str) -> str:
        """kfp.local's INFO line about a task or the pipeline as tlpipe's own: time, name, state (and the
        task's time); every other line as it is."""
        info = _KFP_INFO.match(_COLOUR.sub("", line).strip())
        if not info:
            return line
        clock, said = info.groups()
        if started := _TASK_START.search(said):
            return f"{clock} {started.group(1)} ..."
        if ended := _ENDED.search(said):
            kind, name, status = ended.groups()
            # No "name: " form: a task named layer-sweep-report would read as the "report: <path>" line.
            if kind == "Pipeline":
                return f"{clock} pipeline {name} {status}"
            wall = next((step.wall for step in reversed(self.steps) if step.task == name), None)
            return f"{clock} {name} {status}" + (f" in {wall:.1f} s" if wall is not None else "")
        return line

    def _time(self, line: str) -> None:
        line = _COLOUR.sub("", line)
        if m := _TASK_START.search(line):
            # A ParallelFor starts several tasks of one name: first started, first finished.
            self.started.setdefault(m.group(1), []).append(time.perf_counter())
            self.compute = 0.0
        elif m := _COMPUTE.search(line):
            self.compute = float(m.group(1))  # the outermost step ends last
        elif (m := _ENDED.search(line)) and m.group(1) == "Task" and self.started.get(m.group(2)):
            began = self.started[m.group(2)].pop(0)
            self.steps.append(StepTime(m.group(2), time.perf_counter() - began, self.compute, began))

    def flush(self) -> None:
        if self.log_error is None:
            try:
                self.log_file.flush()
            except OSError as error:
                self.log_error = error
        self.terminal.flush()

    def close_log(self, log_path: Path) -> str:
        """Closes the log file; "" or the sentence saying why the log is incomplete."""
        try:
            self.log_file.close()
        except OSError as error:
            self.log_error = self.log_error or error
        if self.log_error is None:
            return ""
        return f"the log {log_path} is incomplete: {_os_reason(self.log_error)} at {log_path.parent}"


def _interrupt(signum, frame):
    """SIGTERM (a `kill`, a stopping container) ends a run as Ctrl-C does."""
    raise KeyboardInterrupt


def _stop_steps(grace: float = 15) -> None:
    """Ends this process's children (the steps and their workers): SIGTERM, then SIGKILL after `grace` s."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _os_reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _close_interrupted(experiment: str, run_id: str, log_path: Path) -> str:
    """Ends an interrupted run's MLflow runs KILLED (step runs still open FAILED); the one sentence to print."""
    from tlpipe import tracking

    go_on = f"`tlpipe run --resume {run_id}` goes on from where it stopped"
    try:
        if not tracking.pipeline_run_ids(run_id):
            return f"interrupted before run {run_id} reached MLflow; {go_on}; the log is {log_path}"
        tracking.close_pipeline_run(experiment, run_id, "CANCELLED")
    except Exception as error:  # the tracking server may be what failed
        return f"interrupted; run {run_id} could not be closed in MLflow ({str(error).splitlines()[0][:200]})"
    return f"interrupted; run {run_id} marked KILLED; {go_on}; the log is {log_path}"


_SCRATCH = "tlpipe-run-"  # the scratch folder's prefix, before the run's id


def _discard_scratch(run_id: str) -> None:
    """Removes the scratch folder a killed run left (what it kept for a resume stays: tlpipe.resume)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SCRATCH}{run_id}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _close_abandoned(checkpoint_root: str = "") -> None:
    """Closes the runs of `tlpipe run`s of this machine that were killed outright, and removes the
    checkpoints that no resume took up in time (the default place's, and `checkpoint_root`'s when it is
    a local folder)."""
    from tlpipe import tracking

    for abandoned in tracking.close_abandoned_runs():
        _discard_scratch(abandoned)
        print(f"run {abandoned} was left RUNNING by a tlpipe run that is gone; marked KILLED "
              f"(`tlpipe run --resume {abandoned}` goes on from where it stopped)")
    given = [Path(checkpoint_root)] if checkpoint_root and "://" not in checkpoint_root else []
    for expired in resume.expire_checkpoints(settings.checkpoint_root(), *given):
        print(f"run {expired}'s checkpoints removed: not resumed within {resume.KEEP_DAYS} days")


def run(name: str, given: dict[str, str], verbose: bool = False, resumed: str = "") -> RunResult:
    """Runs pipeline `name` with the `given` parameters; with `resumed` (a run id), goes on with that stopped
    run instead, its own pipeline and parameters (tlpipe.resume)."""
    from tlpipe.cluster import pipeline as build_pipeline

    if resumed:
        name, given = resume.recorded(resumed)
    pipeline = build_pipeline(name)
    arguments = preflight.absolute_locations(preflight.pipeline_arguments(pipeline, given))
    defaults = {k: spec.default for k, spec in pipeline.component_spec.inputs.items()}
    values = {**defaults, **arguments}
    # Steps run as child processes: give them absolute locations that do not depend on their cwd.
    os.environ["TLPIPE_HOME"] = str(settings.home())
    preflight.preflight(arguments, defaults)
    _close_abandoned(values.get("checkpoint_root", ""))
    if resumed:
        from tlpipe import tracking
        from tlpipe.data.spec import data_versions

        resume.check_data_unchanged(resumed, data_versions(values.get("source", ""), values["target"], values.get("attributes", "")))
        tracking.reopen_pipeline_run(resumed)
        print(f"resuming run {resumed} ({name}): the steps it finished are not run again, and a training step it "
              "stopped in goes on from its last checkpoint", flush=True)

    from kfp import local

    # Cluster-only settings (image, display names, caching) are expected to be ignored here.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    run_id = resumed or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_root = settings.pipeline_root() / run_id
    if not resumed:
        resume.record(run_root, name, given)
    started = time.perf_counter()
    log_path = settings.home() / "logs" / f"{run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    step_env = {settings.RUN_ENV: run_id,  # the steps' pipeline run (tlpipe.tracking)
                PARENT_ENV: str(os.getpid())}  # the steps end when this process does (tlpipe.lifetime)
    with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{run_id}-") as tmp:
        error_file = Path(tmp) / "error"
        # The run's scratch, removed with it: KFP's workspace, and (TMPDIR) each task's folder with its
        # ephemeral_component.py.
        (Path(tmp) / "workspace").mkdir()
        # The cache is the run's own: only a resume of this run finds its finished tasks there.
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root),
                   workspace_root=str(Path(tmp) / "workspace"), enable_caching=True,
                   cache_root=str(run_root / resume.CACHE))
        step_env |= {ERROR_FILE_ENV: str(error_file), "TMPDIR": tmp}
        saved_env = {key: os.environ.get(key) for key in step_env}
        os.environ.update(step_env)
        view = _LogView(sys.stdout, open(log_path, "a" if resumed else "w"), verbose)
        terminal, sys.stdout = sys.stdout, view
        previous = signal.signal(signal.SIGTERM, _interrupt)
        failure = ""
        try:
            pipeline(**arguments)
        except RuntimeError as error:
            said = error_file.read_text().strip().rstrip(".") if error_file.exists() else str(error)
            failure = f"{said}; the full log is {log_path}"
        except KeyboardInterrupt:
            sys.stdout = terminal
            deadline = end_within(60, f"interrupted; closing run {run_id} took over 60 s, so it ended there")
            _stop_steps()  # before their runs are closed and their files removed, which they would write again
            said = _close_interrupted(values.get("experiment", "tlpipe"), run_id, log_path)
            deadline.cancel()
            raise KeyboardInterrupt(said) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            sys.stdout = terminal
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            incomplete_log = view.close_log(log_path)
    seconds = time.perf_counter() - started
    if failure:
        try:
            finished = _collected(run_id, run_root, log_path, seconds, view.steps)
        except (OSError, ValueError, KeyError):  # what a failed step left may be unreadable: the sentence matters
            finished = RunResult(run_id=run_id, report=None, log=log_path, seconds=seconds, steps=view.steps)
        raise RunFailed(f"{failure.rstrip('. ')}; {incomplete_log}." if incomplete_log else failure, finished)
    result = _collected(run_id, run_root, log_path, seconds, view.steps)
    if incomplete_log:
        print(f"tlpipe: warning: {incomplete_log}", file=sys.stderr)
    return result


def _collected(run_id: str, run_root: Path, log_path: Path, seconds: float, steps: list[StepTime]) -> RunResult:
    """What the run left in its folder (its newest attempt's outputs first): the report, copied to
    $TLPIPE_HOME/reports/<run id>.html, the evaluation, the registration, the sweep, the predictions."""
    newest_first = resume.attempts(run_root)[::-1]
    results = {key: next((d / p for d in newest_first for p in places if (d / p).exists()), None)
               for key, places in RESULTS.items()}
    report = None
    if results["report"]:
        report = settings.home() / "reports" / f"{run_id}.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results["report"], report)
    result = RunResult(run_id=run_id, report=report, log=log_path, seconds=seconds, steps=steps,
                       predictions=results["predictions"])
    if results["evaluation"]:
        result.evaluation = Evaluation.load(results["evaluation"])
    if results["registration"]:
        result.registration = Registration.load(results["registration"])
    if results["sweep"]:
        result.sweep = json.loads(results["sweep"].read_text())
    return result


def format_timing(result: RunResult) -> str:
    """The per-step timing table: wall time, compute inside the step, and the overhead around it."""
    lines = [f"{'step':<18} {'wall s':>8} {'compute s':>10} {'overhead s':>11}", "-" * 50]
    for step in result.steps:
        lines.append(f"{step.task:<18} {step.wall:>8.1f} {step.compute:>10.1f} {step.wall - step.compute:>11.1f}")
    between = result.seconds - sum(s.wall for s in result.steps)
    lines.append(f"{'(between steps)':<18} {between:>8.1f} {0:>10.1f} {between:>11.1f}")
    compute = sum(s.compute for s in result.steps)
    overhead = result.seconds - compute
    lines.append("-" * 50)
    lines.append(f"{'total':<18} {result.seconds:>8.1f} {compute:>10.1f} {overhead:>11.1f}"
                 f"  ({overhead / result.seconds:.0%} overhead)")
    return "\n".join(lines)
