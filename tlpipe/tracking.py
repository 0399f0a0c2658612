"""MLflow: one parent run per pipeline run, one nested run per step, and the model registry.

Steps run in separate processes (and on a cluster, separate pods), so they find their parent run by
the tag `tlpipe.pipeline_run` instead of sharing an active run. The pipeline run's id reaches a step
through the environment (RUN_ENV), never as a component input: an input that changes every run would
make every cache key unique. With MLFLOW_TRACKING_URI unset, everything goes to the embedded default
under $TLPIPE_HOME (tlpipe.settings).
"""

import contextlib
import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import tlpipe
from tlpipe import settings
from tlpipe.errors import TlpipeError

PIPELINE_RUN_TAG = "tlpipe.pipeline_run"
ROLE_TAG = "tlpipe.role"
RUN_ENV = settings.RUN_ENV


def current_pipeline_run() -> str:
    """The id of the pipeline run this step belongs to."""
    run = os.environ.get(RUN_ENV, "")
    if not run:
        raise TlpipeError(f"{RUN_ENV} is not set: start pipelines with `tlpipe run`, or compile them with "
                          "`tlpipe compile` for Kubeflow Pipelines, which sets it from the run's id.")
    return run


def configure() -> MlflowClient:
    uri = settings.tracking_uri()
    if uri.startswith("sqlite:"):
        settings.home().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient()


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=settings.artifact_location())
    except MlflowException:  # created meanwhile by a parallel step
        return client.get_experiment_by_name(name).experiment_id


def _runs(client: MlflowClient, experiment: str, pipeline_run: str, role: str, **search) -> list:
    """The MLflow runs of one pipeline run: its parent run (role "pipeline") or its steps ("step")."""
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and tags.`{ROLE_TAG}` = '{role}'"
    return client.search_runs([experiment_id(client, experiment)], filter_string=query, **search)


def parent_run_id(client: MlflowClient, experiment: str, pipeline_run: str, pipeline: str = "transfer") -> str:
    """The MLflow run standing for this pipeline run; created by whichever step comes first."""
    found = _runs(client, experiment, pipeline_run, "pipeline", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=f"{pipeline}-{pipeline_run[-12:]}",
        tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "tlpipe.code_version": code_version()},
    )
    return run.info.run_id


@contextlib.contextmanager
def step_run(step: str, experiment: str, pipeline_run: str, params: dict):
    """The nested MLflow run of one pipeline step, with its parameters logged. A retried step (same
    pipeline run, same step) goes on in the run its failed attempt opened instead of orphaning it."""
    client = configure()
    earlier = [r for r in _runs(client, experiment, pipeline_run, "step") if r.data.tags.get("tlpipe.step") == step]
    if earlier:
        started = mlflow.start_run(run_id=earlier[0].info.run_id)  # resumes it, RUNNING again
    else:
        started = mlflow.start_run(
            experiment_id=experiment_id(client, experiment),
            run_name=step,
            parent_run_id=parent_run_id(client, experiment, pipeline_run),
            tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "step", "tlpipe.step": step},
        )
    with started as run:
        mlflow.log_params(params)
        yield run


class EpochLogger:
    """Per-epoch metrics (throughput included) to the step's MLflow run, and a progress bar line with
    rate and ETA about ten times per step. Picklable: rank 0 of data-parallel training calls it too."""

    def __init__(self, step: str, epochs: int):
        self.step, self.epochs = step, epochs
        self.every = max(1, epochs // 10)
        active = mlflow.active_run()
        self.run_id = active.info.run_id if active else None
        self.started, self.first = time.time(), None
        self._client = None  # made on first use, in the process that trains

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric
        from tqdm import tqdm

        if self.first is None:  # the first epoch this process trains: later than 0 after a resume
            self.first = epoch
        if self.run_id:
            self._client = self._client or configure()
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(f"train_{k}", v, now, epoch) for k, v in metrics.items()])
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            bar = tqdm.format_meter(epoch + 1, self.epochs, time.time() - self.started, ncols=60, unit="epoch",
                                    initial=self.first)
            shown = "  ".join(f"img/s {v:.0f}" if k == "images_per_second" else f"{k} {v:.3f}" for k, v in metrics.items())
            print(f"[{self.step}] epoch {bar}  {shown}", flush=True)


# Kubeflow Pipelines reports a task's final state as a task state or, in older backends, an MLMD execution state.
_FINAL_STATES = {"SUCCEEDED": "FINISHED", "COMPLETE": "FINISHED", "CACHED": "FINISHED", "CANCELED": "KILLED",
                 "CANCELLED": "KILLED", "CANCELING": "KILLED"}


def close_pipeline_run(experiment: str, pipeline_run: str, final_state: str) -> str:
    """Ends the pipeline run's MLflow parent run with the status matching the pipeline's final state
    (FINISHED, KILLED, otherwise FAILED) and fails any step run still open (a step whose pod was killed).
    Called by the pipelines' exit handler, which runs whatever happened to the steps."""
    status = _FINAL_STATES.get(final_state.upper(), "FAILED")
    client = configure()
    for run in _runs(client, experiment, pipeline_run, "step"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
    for run in _runs(client, experiment, pipeline_run, "pipeline"):
        client.set_terminated(run.info.run_id, status)
    return status


def pipeline_lineage(experiment: str, pipeline_run: str) -> tuple[dict[str, str], dict[str, str]]:
    """Every parameter the pipeline's steps logged so far, and the dataset hashes ingest tagged."""
    params: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for run in _runs(configure(), experiment, pipeline_run, "step"):
        params.update(run.data.params)
        hashes.update({k: v for k, v in run.data.tags.items() if k.startswith("tlpipe.hash.")})
    return dict(sorted(params.items())), hashes


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


def check_reachable() -> None:
    """Fails fast, naming the server, when the tracking server cannot be reached or refuses this
    machine's credentials (MLFLOW_TRACKING_USERNAME and _PASSWORD, or _TOKEN).

    Plain requests with a short timeout: MLflow's own client retries for minutes.
    """
    uri = settings.tracking_uri()
    if uri.startswith(("http://", "https://")):
        import base64
        import urllib.error
        import urllib.request

        base = uri.rstrip("/")
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
        except urllib.error.HTTPError as error:
            raise TlpipeError(f"the MLflow tracking server at {uri} answered HTTP {error.code} to a health check.") from None
        except OSError as error:
            reason = getattr(error, "reason", error)
            raise TlpipeError(f"cannot reach the MLflow tracking server at {uri} ({reason}).") from None
        request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and password:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            if error.code == 401 and request.has_header("Authorization"):
                raise TlpipeError(f"the MLflow tracking server at {uri} refused the credentials of "
                                  f"{user or 'MLFLOW_TRACKING_TOKEN'}; check MLFLOW_TRACKING_USERNAME and "
                                  "MLFLOW_TRACKING_PASSWORD.") from None
            if error.code == 401:
                raise TlpipeError(f"the MLflow tracking server at {uri} requires authentication; set "
                                  "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.") from None
            raise TlpipeError(f"the MLflow tracking server at {uri} answered HTTP {error.code} to a search.") from None
        except OSError as error:
            raise TlpipeError(f"cannot reach the MLflow tracking server at {uri} ({getattr(error, 'reason', error)}).") from None
        return
    configure().search_experiments(max_results=1)
