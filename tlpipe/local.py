"""Runs a pipeline on this machine with kfp.local (SubprocessRunner, in the current environment)."""

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tlpipe import settings, tracking
from tlpipe.data import check_spec
from tlpipe.errors import ERROR_FILE_ENV, TlpipeError
from tlpipe.evaluate import Evaluation
from tlpipe.registry import Registration

_CASTS = {"Integer": int, "Float": float, "String": str, "Boolean": lambda v: v.lower() in ("1", "true", "yes")}


@dataclass
class RunResult:
    evaluation: Evaluation
    registration: Registration
    report: Path
    seconds: float


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
        except ValueError:
            raise TlpipeError(f"parameter {name}={value!r} is not a valid {kind.lower()}.") from None
    return arguments


def preflight(arguments: dict, defaults: dict) -> None:
    """Checks that are cheap now and expensive to find out after training started."""
    values = {**defaults, **arguments}
    for key in ("source", "target"):
        if key in values:
            check_spec(values[key])
    weights = values.get("pretrained_weights")
    if weights and not Path(weights).is_file():
        raise TlpipeError(f"pretrained weights file {weights} does not exist.")
    tracking.check_reachable()


def run(name: str, given: dict[str, str]) -> RunResult:
    from pipelines import registry

    pipelines = registry()
    if name not in pipelines:
        raise TlpipeError(f"unknown pipeline '{name}'; choose one of {', '.join(pipelines)}.")
    pipeline = pipelines[name]
    arguments = pipeline_arguments(pipeline, given)
    defaults = {k: spec.default for k, spec in pipeline.component_spec.inputs.items()}
    # Steps run as child processes: give them absolute locations that do not depend on their cwd.
    os.environ["TLPIPE_HOME"] = str(settings.home())
    preflight(arguments, defaults)

    from kfp import local

    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    logging.getLogger("kfp").setLevel(logging.WARNING)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(settings.pipeline_root()))
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        error_file = Path(tmp) / "error"
        os.environ[ERROR_FILE_ENV] = str(error_file)
        try:
            task = pipeline(**arguments)
        except RuntimeError as error:
            _fail_open_runs({**defaults, **arguments}.get("experiment", "tlpipe"), started)
            message = error_file.read_text() if error_file.exists() else f"{error}; see the step's log above."
            raise TlpipeError(message) from None
        finally:
            os.environ.pop(ERROR_FILE_ENV, None)
    outputs = task.outputs
    return RunResult(
        evaluation=Evaluation.load(outputs["evaluation"].path),
        registration=Registration.load(outputs["registration"].path),
        report=Path(outputs["report"].path),
        seconds=time.time() - started,
    )


def _fail_open_runs(experiment: str, since: float) -> None:
    """Marks the MLflow runs a failed local pipeline left open as FAILED."""
    client = tracking.configure()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if run.info.start_time >= since * 1000:
            client.set_terminated(run.info.run_id, "FAILED")
