"""MLflow: one parent run per pipeline run, one nested run per step, and the model registry.

Steps run in separate processes (and on a cluster, separate pods), so they find their parent run by
the tag `tlpipe.pipeline_run` instead of sharing an active run. With MLFLOW_TRACKING_URI unset,
everything goes to the embedded default under $TLPIPE_HOME (tlpipe.settings).
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
    """A nested MLflow run for one pipeline step, with its parameters logged."""
    client = configure()
    parent = parent_run_id(client, experiment, pipeline_run)
    with mlflow.start_run(
        experiment_id=experiment_id(client, experiment),
        run_name=step,
        parent_run_id=parent,
        tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "step", "tlpipe.step": step},
    ) as run:
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


def end_pipeline_run(experiment: str, pipeline_run: str, status: str) -> None:
    client = configure()
    for run in _runs(client, experiment, pipeline_run, "pipeline"):
        client.set_terminated(run.info.run_id, status)


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
    """Fails fast, naming the server, when the tracking server cannot be reached.

    A plain health request with a short timeout: MLflow's own client retries for minutes.
    """
    uri = settings.tracking_uri()
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        except urllib.error.HTTPError as error:
            raise TlpipeError(f"the MLflow tracking server at {uri} answered HTTP {error.code} to a health check.") from None
        except OSError as error:
            reason = getattr(error, "reason", error)
            raise TlpipeError(f"cannot reach the MLflow tracking server at {uri} ({reason}).") from None
        return
    configure().search_experiments(max_results=1)
