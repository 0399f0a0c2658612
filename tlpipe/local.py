"""Runs a pipeline on this machine with kfp.local (SubprocessRunner, in the current environment)."""

import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from tlpipe import augment, selection, settings, storage, tracking
from tlpipe.cluster import check_cluster_checkpoint_root
from tlpipe.data import check_spec
from tlpipe.data.spec import BUILTIN, spec_location
from tlpipe.errors import ERROR_FILE_ENV, TlpipeError
from tlpipe.evaluate import Evaluation
from tlpipe.methods.finetune import parse_strategy
from tlpipe.models.backbones import build_backbone, check_backbone
from tlpipe.models.weights import hub_file, is_hub_name
from tlpipe.registry import Gate, Registration
from tlpipe.steps import ADAPT_METHODS, COMPUTE_MARK

def _json_list(value: str) -> list:
    parsed = json.loads(value)
    if not isinstance(parsed, list):
        raise ValueError(value)
    return parsed


_CASTS = {"Integer": int, "Float": float, "String": str, "Boolean": lambda v: v.lower() in ("1", "true", "yes"),
          "List": _json_list}


# Where each pipeline's results are in its run folder (kfp.local writes <task>/<output>): Kubeflow allows no
# pipeline outputs from inside the exit handler (pipelines.closing_run), so they are looked up here.
RESULTS = {"report": ("register/report", "layer-sweep-report/report"),
           "evaluation": ("evaluate/evaluation", "evaluate-retrain/evaluation"),
           "registration": ("register/registration",), "sweep": ("layer-sweep-report/sweep",)}


@dataclass
class StepTime:
    task: str
    wall: float  # from kfp.local starting the task to its end
    compute: float  # inside the step function (tlpipe.steps.timed)
    began: float = 0.0  # perf_counter at the start


@dataclass
class RunResult:
    run_id: str  # the pipeline run: the MLflow parent run's name, the report's and the log's file name
    report: Path
    log: Path
    seconds: float
    steps: list[StepTime]
    evaluation: Evaluation | None = None  # transfer and retrain
    registration: Registration | None = None
    sweep: list[dict] | None = None  # layer-sweep: its points

    @property
    def sequential(self) -> bool:
        """Whether the steps ran one after another (a ParallelFor runs them side by side)."""
        steps = sorted(self.steps, key=lambda s: s.began)
        return all(b.began >= a.began + a.wall for a, b in zip(steps, steps[1:]))


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([\w-]+)'")
_TASK_END = re.compile(r"Task '([\w-]+)' finished with status")
_COMPUTE = re.compile(re.escape(COMPUTE_MARK) + r" ([0-9.]+) s")


class _LogView(io.TextIOBase):
    """Sends the whole KFP log to a file and only task status, progress and errors to the terminal;
    times each task as its lines go by (kfp.local runs one task at a time)."""

    SHOWN = ("Executing task", "finished with status", "] epoch ", "tlpipe: error")

    def __init__(self, terminal, log_file, verbose: bool):
        self.terminal, self.log_file, self.verbose, self.pending = terminal, log_file, verbose, ""
        self.steps: list[StepTime] = []
        self.started: dict[str, list[float]] = {}
        self.compute = 0.0

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._time(line)
            if self.verbose or any(mark in line for mark in self.SHOWN):
                self.terminal.write(line.strip() + "\n")
        return len(text)

    def _time(self, line: str) -> None:
        line = _COLOUR.sub("", line)
        if m := _TASK_START.search(line):
            # A ParallelFor starts several tasks of one name: first started, first finished.
            self.started.setdefault(m.group(1), []).append(time.perf_counter())
            self.compute = 0.0
        elif m := _COMPUTE.search(line):
            self.compute = float(m.group(1))  # the outermost step ends last
        elif (m := _TASK_END.search(line)) and self.started.get(m.group(1)):
            began = self.started[m.group(1)].pop(0)
            self.steps.append(StepTime(m.group(1), time.perf_counter() - began, self.compute, began))

    def flush(self) -> None:
        self.log_file.flush()
        self.terminal.flush()


def pipeline_arguments(pipeline, given: dict[str, str]) -> dict:
    """Casts NAME=VALUE strings to the pipeline's parameter types; unknown names are an error."""
    inputs = pipeline.component_spec.inputs
    arguments = {}
    for name, value in given.items():
        if name not in inputs:
            raise TlpipeError(f"pipeline {pipeline.name} has no parameter '{name}'; its parameters are {', '.join(inputs)}.")
        kind = inputs[name].type
        try:
            arguments[name] = _CASTS.get(kind, str)(value)
        except ValueError:  # json.JSONDecodeError is one
            example = " (JSON, e.g. [0,1,2])" if kind == "List" else ""
            raise TlpipeError(f"parameter {name}={value!r} is not a valid {kind.lower()}{example}.") from None
    return arguments


def preflight(arguments: dict, defaults: dict, on_cluster: bool = False) -> list[str]:
    """Checks that are cheap now and expensive to find out after training started.

    `on_cluster` (tlpipe submit and schedule): the data and services are the cluster's. Parameters are
    checked all the same; S3 locations are checked when this machine has S3 credentials; paths and the
    tracking server, which the pods see and this machine may not, are not. Returns what was not checked.
    """
    values = {**defaults, **arguments}
    check_parameters(values)
    if on_cluster and "checkpoint_root" in values:
        check_cluster_checkpoint_root(values["checkpoint_root"])
    skipped = []
    s3 = not on_cluster or storage.has_credentials()

    def reachable(name: str, location: str) -> bool:
        """Whether `location` can be checked from here; notes it in `skipped` if not."""
        if not on_cluster:
            return True
        if storage.is_s3(location):
            if not s3:
                skipped.append(f"{name} {location} (no S3 credentials here)")
            return s3
        skipped.append(f"{name} {location} (a path the pods read)")
        return False

    for key in ("source", "target"):
        if key in values:
            location = spec_location(values[key])
            check_spec(values[key], read=not location or reachable(key, location))
    weights = values.get("pretrained_weights")
    if weights and is_hub_name(weights):
        if on_cluster:
            skipped.append(f"pretrained_weights {weights} (the pods download it, or find it in their cache)")
        else:
            hub_file(weights)  # downloaded into its cache now (or found there), or one sentence on why not
    elif weights and reachable("pretrained_weights", weights):
        if storage.is_s3(weights):
            storage.check_bucket(weights)
        elif not Path(weights).is_file():
            raise TlpipeError(f"pretrained weights file {weights} does not exist.")
    for key in ("publish_to", "checkpoint_root"):
        if storage.is_s3(values.get(key, "")) and reachable(key, values[key]):
            storage.check_bucket(values[key])
    if on_cluster:
        skipped.append("the MLflow tracking server (the pods reach it through the cluster's Secret)")
    else:
        tracking.check_reachable()
    return skipped


def check_parameters(values: dict) -> None:
    """The checks of parameter values alone, wherever the pipeline will run."""
    if "strategy" in values:
        name, _ = parse_strategy(values["strategy"])
        builtin = values.get("source") in BUILTIN
        if name == "zero-shot" and not values.get("attributes") and not builtin:
            raise TlpipeError("zero-shot strategies need an attribute table for these classes: set -p attributes=<file.csv> "
                              "(class,<attribute>,...).")
    if "backbone" in values:
        check_backbone(values["backbone"])
    if values.get("adapt_bottleneck", 0) < 0 or values.get("adapt_backbone_lr", 1.0) < 0 or values.get("sdat_rho", 1.0) <= 0:
        raise TlpipeError("adapt_bottleneck and adapt_backbone_lr must be 0 or more, and sdat_rho more than 0.")
    if "blocks" in values:
        _check_blocks(values["blocks"], values.get("backbone", "small-cnn"), values.get("image_size", 32))
    if values.get("adapt_method") not in (None, *ADAPT_METHODS):
        raise TlpipeError(f"unknown adaptation method '{values['adapt_method']}'; use {', '.join(ADAPT_METHODS)}.")
    for name in ("source_augment", "target_augment"):
        if name in values:
            augment.check(values[name])
    if "target_val_per_class" in values:
        if values["target_val_per_class"] < 0:
            raise TlpipeError(f"target_val_per_class must be 0 or more, got {values['target_val_per_class']}.")
    if "select_by" in values:
        selection.resolve(values["select_by"], values.get("target_val_per_class", 0))
    if "gate_alpha" in values:
        Gate(values["gate_alpha"], values.get("gate_margin", 0.0))


def _check_blocks(blocks: list, backbone: str, image_size: int) -> None:
    """The layer sweep's k values: whole numbers from 0 to the backbone's number of blocks."""
    n = len(build_backbone(backbone, image_size).blocks)
    if not blocks or any(not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n for k in blocks):
        raise TlpipeError(f"blocks={json.dumps(blocks)}: give whole numbers from 0 to {n}, the number of blocks of the "
                          f"{backbone} backbone, e.g. [0, 1, 2].")


def run(name: str, given: dict[str, str], verbose: bool = False) -> RunResult:
    from tlpipe.cluster import pipeline as build_pipeline

    pipeline = build_pipeline(name)
    arguments = pipeline_arguments(pipeline, given)
    defaults = {k: spec.default for k, spec in pipeline.component_spec.inputs.items()}
    # Steps run as child processes: give them absolute locations that do not depend on their cwd.
    os.environ["TLPIPE_HOME"] = str(settings.home())
    preflight(arguments, defaults)

    from kfp import local

    # Cluster-only settings (image, display names, caching) are expected to be ignored here.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    os.environ[settings.RUN_ENV] = run_id  # the steps' pipeline run (tlpipe.tracking)
    run_root = settings.pipeline_root() / run_id
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root))
    started = time.perf_counter()
    log_path = settings.home() / "logs" / f"{run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "w") as log_file:
        error_file = Path(tmp) / "error"
        os.environ[ERROR_FILE_ENV] = str(error_file)
        view = _LogView(sys.stdout, log_file, verbose)
        terminal, sys.stdout = sys.stdout, view
        try:
            pipeline(**arguments)
        except RuntimeError as error:
            message = error_file.read_text() if error_file.exists() else f"{error}; the full log is {log_path}"
            raise TlpipeError(message) from None
        finally:
            sys.stdout = terminal
            os.environ.pop(ERROR_FILE_ENV, None)
            os.environ.pop(settings.RUN_ENV, None)
    (run_dir,) = run_root.iterdir()
    results = {key: next((run_dir / p for p in places if (run_dir / p).exists()), None) for key, places in RESULTS.items()}
    report = settings.home() / "reports" / f"{run_id}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results["report"], report)
    result = RunResult(run_id=run_id, report=report, log=log_path, seconds=time.perf_counter() - started, steps=view.steps)
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
