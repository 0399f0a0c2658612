"""MLflow runs: the pipeline run's parent, one nested run per step, closing them, and the code version."""

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import tlpipe
from tlpipe import lifetime, settings
from tlpipe.errors import TlpipeError

PIPELINE_RUN_TAG = "tlpipe.pipeline_run"
ROLE_TAG = "tlpipe.role"
OWNER_TAG = "tlpipe.owner"  # the local `tlpipe run` process (tlpipe.lifetime.owner); absent on a cluster
RUN_ENV = settings.RUN_ENV
KFP_RUN_ENV = "MLFLOW_RUN_ID"  # the task's nested run, created by Kubeflow Pipelines' MLflow integration


def current_pipeline_run() -> str:
    """The id of the pipeline run this step belongs to."""
    run = os.environ.get(RUN_ENV, "")
    if not run:
        raise TlpipeError(f"{RUN_ENV} is not set: start pipelines with `tlpipe run`, or compile them with "
                          "`tlpipe compile` for Kubeflow Pipelines, which sets it from the run's id.")
    return run


# MLflow's client retries a failed request 7 times over about 4 minutes, silently, and a run makes many
# requests: a step that lost its server would hang for many minutes. 5 retries take about a minute (30 s
# without a byte from a hung server counts as a failed try).
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def configure() -> MlflowClient:
    for name, value in RETRIES.items():  # the user's own settings win
        os.environ.setdefault(name, value)
    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient()
    settings.home().mkdir(parents=True, exist_ok=True)
    # The first client creates the database's schema; two runs started at once on an empty home would
    # both migrate it and one would fail, so the creation is serialised by a lock beside the file.
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    # Creating it logs MLflow's and alembic's migration steps at INFO, which tell a user nothing.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MlflowClient()


def kfp_step_run(client: MlflowClient):
    """The run Kubeflow Pipelines' MLflow integration created for this task, or None without it."""
    run_id = os.environ.get(KFP_RUN_ENV, "")
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise TlpipeError(f"{KFP_RUN_ENV}={run_id} names no run on the MLflow server {settings.tracking_uri()} "
                          f"({error.error_code}).") from None


# tlpipe's experiments hold training runs, and say so. (MLflow 3.17's UI still opens on its GenAI pages
# unless the link asks for the training view: WORKFLOW.)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
WORKFLOW = "?workflowType=machine_learning"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment of this pipeline's runs: the one Kubeflow's MLflow integration chose, or `name`."""
    kfp_run = kfp_step_run(client)
    if kfp_run is not None:
        return kfp_run.info.experiment_id
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=settings.artifact_location(), tags=EXPERIMENT_TAGS)
    except MlflowException:  # created meanwhile by a parallel step
        return client.get_experiment_by_name(name).experiment_id


def _runs(client: MlflowClient, experiment: str, pipeline_run: str, role: str, **search) -> list:
    """The MLflow runs of one pipeline run: its parent run (role "pipeline") or its steps ("step")."""
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and tags.`{ROLE_TAG}` = '{role}'"
    return client.search_runs([experiment_id(client, experiment)], filter_string=query, **search)


def _parent_runs(client: MlflowClient, pipeline_run: str) -> list:
    """The MLflow parent run of a pipeline run, in whichever experiment it is."""
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and tags.`{ROLE_TAG}` = 'pipeline'"
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=query) if experiments else []


def pipeline_run_ids(pipeline_run: str) -> list[str]:
    return [r.info.run_id for r in _parent_runs(configure(), pipeline_run)]


def parent_run_id(client: MlflowClient, experiment: str, pipeline_run: str) -> str:
    """The MLflow run standing for this pipeline run; created by whichever step comes first (or by
    Kubeflow's MLflow integration, whose parent run is then tagged as this pipeline run's)."""
    found = _runs(client, experiment, pipeline_run, "pipeline", max_results=1)
    if found:
        return found[0].info.run_id
    kfp_run = kfp_step_run(client)
    if kfp_run is not None and kfp_run.data.tags.get("mlflow.parentRunId"):
        parent = kfp_run.data.tags["mlflow.parentRunId"]
        for key, value in {PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "tlpipe.code_version": code_version()}.items():
            client.set_tag(parent, key, value)
        return parent
    tags = {PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "tlpipe.code_version": code_version()}
    if owner := lifetime.owner():
        tags[OWNER_TAG] = owner
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=pipeline_run,  # the one identifier of the run, in the report and its file name too
        tags=tags,
    )
    return run.info.run_id


@contextlib.contextmanager
def step_run(step: str, experiment: str, pipeline_run: str, params: dict, shared: dict | None = None,
             system_metrics: bool = False):
    """The nested MLflow run of one pipeline step, with its parameters logged; `shared` parameters
    (those that describe the whole pipeline run) go to the parent run too. A retried step (same pipeline
    run, same step) goes on in the run its failed attempt opened instead of orphaning it. With
    `system_metrics`, MLflow samples CPU, memory and GPU use into the run while the step works."""
    client = configure()
    tags = {PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "step", "tlpipe.step": step}
    parent = parent_run_id(client, experiment, pipeline_run)
    kfp_run = kfp_step_run(client)
    if kfp_run is not None and kfp_run.data.tags.get("tlpipe.step", step) != step:
        kfp_run = None  # a second step run in one task (the layer sweep's two modes) gets a nested run of its own
    earlier = [r for r in _runs(client, experiment, pipeline_run, "step") if r.data.tags.get("tlpipe.step") == step]
    if kfp_run is not None:
        started = mlflow.start_run(run_id=kfp_run.info.run_id, tags=tags, log_system_metrics=system_metrics)
    elif earlier:  # resumes it, RUNNING again
        started = mlflow.start_run(run_id=earlier[0].info.run_id, log_system_metrics=system_metrics)
    else:
        started = mlflow.start_run(experiment_id=experiment_id(client, experiment), run_name=step,
                                   parent_run_id=parent, tags=tags, log_system_metrics=system_metrics)
    task_run = os.environ.get(KFP_RUN_ENV)
    try:
        with started as run:
            mlflow.log_params(params)
            if shared:
                log_to_parent(client, parent, params=shared)
            yield run
    finally:
        if task_run:  # mlflow.end_run unsets it; later calls in this task still need to know where they are
            os.environ[KFP_RUN_ENV] = task_run


def log_to_parent(client: MlflowClient, parent: str, params: dict | None = None, metrics: dict | None = None,
                  tags: dict | None = None) -> None:
    """Summarises into the pipeline's parent run. A parameter keeps its first value: a retried or
    cached step logs the same one again."""
    from mlflow.entities import Metric, Param, RunTag

    logged = client.get_run(parent).data.params if params else {}
    now = int(time.time() * 1000)
    client.log_batch(
        parent,
        params=[Param(k, str(v)) for k, v in (params or {}).items() if k not in logged],
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def current_parent(experiment: str, pipeline_run: str) -> str:
    return parent_run_id(configure(), experiment, pipeline_run)


def parent_of(run) -> str:
    """The parent run of a step run (as step_run yields it)."""
    return run.data.tags["mlflow.parentRunId"]


def run_link(run_id: str) -> str:
    """Where a person opens the run: the tracking server's page, or the path to open in `mlflow ui`."""
    run = configure().get_run(run_id)
    path = f"#/experiments/{run.info.experiment_id}/runs/{run_id}{WORKFLOW}"
    uri = settings.tracking_uri()
    return f"{uri.rstrip('/')}/{path}" if uri.startswith(("http://", "https://")) else path


# Kubeflow Pipelines reports a task's final state as a task state or, in older backends, an MLMD execution state.
_FINAL_STATES = {"SUCCEEDED": "FINISHED", "COMPLETE": "FINISHED", "CACHED": "FINISHED", "CANCELED": "KILLED",
                 "CANCELLED": "KILLED", "CANCELING": "KILLED"}


def close_pipeline_run(experiment: str, pipeline_run: str, final_state: str) -> str:
    """Ends the pipeline run's MLflow parent run with the status matching the pipeline's final state
    (FINISHED, KILLED, otherwise FAILED) and fails any step run still open (a step whose pod was killed).
    Called by the pipelines' exit handler, which runs whatever happened to the steps."""
    status = _FINAL_STATES.get(final_state.upper(), "FAILED")
    client = configure()
    _close(client, experiment_id(client, experiment), pipeline_run, status)
    return status


def _close(client: MlflowClient, experiment: str, pipeline_run: str, status: str) -> None:
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'"
    runs = client.search_runs([experiment], filter_string=query)
    for run in runs:
        if run.data.tags.get(ROLE_TAG) == "step" and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
    for run in runs:
        if run.data.tags.get(ROLE_TAG) == "pipeline":
            client.set_terminated(run.info.run_id, status)


def close_abandoned_runs() -> list[str]:
    """Ends KILLED the pipeline runs left RUNNING by a `tlpipe run` of this machine that is gone (killed
    with SIGKILL, crashed, or its machine restarted), their open steps FAILED; returns their names.
    Runs of other machines and of clusters (no owner) are left alone: their owner cannot be checked here."""
    client = configure()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    query = f"attributes.status = 'RUNNING' and tags.`{ROLE_TAG}` = 'pipeline' and tags.`{OWNER_TAG}` LIKE '%:%'"
    closed = []
    for run in client.search_runs(experiments, filter_string=query):
        if lifetime.gone(run.data.tags[OWNER_TAG]):
            _close(client, run.info.experiment_id, run.data.tags[PIPELINE_RUN_TAG], "KILLED")
            closed.append(run.data.tags[PIPELINE_RUN_TAG])
    return closed


def reopen_pipeline_run(pipeline_run: str) -> None:
    """Marks a stopped local run RUNNING again, owned by this process (`tlpipe run --resume`); refuses a run
    that finished or that its `tlpipe run` still runs. A run that never reached MLflow has nothing to reopen."""
    client = configure()
    for run in _parent_runs(client, pipeline_run):
        if run.info.status == "FINISHED":
            raise TlpipeError(f"run {pipeline_run} finished; there is nothing to resume.")
        if run.info.status == "RUNNING":  # not closed by close_abandoned_runs: its owner lives, or is elsewhere
            host, pid, _ = run.data.tags.get(OWNER_TAG, "a cluster:?:").rsplit(":", 2)
            raise TlpipeError(f"run {pipeline_run} is still running (on {host}, process {pid}); it cannot be resumed.")
        client.set_tag(run.info.run_id, OWNER_TAG, lifetime.owner(str(os.getpid())))
        client.update_run(run.info.run_id, status="RUNNING")


def code_version() -> str:
    """tlpipe's version plus the git commit when running from a checkout (or $TLPIPE_GIT_SHA)."""
    sha = os.environ.get("TLPIPE_GIT_SHA", "")
    if not sha:
        repo = Path(tlpipe.__file__).resolve().parent.parent
        if (repo / ".git").exists():
            try:
                sha = subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                sha = ""
    return f"{tlpipe.__version__}+{sha}" if sha else tlpipe.__version__
