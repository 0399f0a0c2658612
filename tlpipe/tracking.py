"""MLflow: one parent run per pipeline run, one nested run per step, and the model registry.

Steps run in separate processes (and on a cluster, separate pods), so they find their parent run by
the tag `tlpipe.pipeline_run` instead of sharing an active run. The pipeline run's id reaches a step
through the environment (RUN_ENV), never as a component input: an input that changes every run would
make every cache key unique. With MLFLOW_TRACKING_URI unset, everything goes to the embedded default
under $TLPIPE_HOME (tlpipe.settings).

Where Kubeflow Pipelines' own MLflow integration runs (KFP 2.17 with the MLflow plugin), it creates the
parent run and one nested run per task and hands the task's run to the pod as MLFLOW_RUN_ID: steps then
log into that run and summarise into its parent instead of opening their own.

The parent run is what a person compares runs by: the shared parameters (source, target, backbone, ...),
each model's validation and test accuracy, the gate's verdict and the report. Step runs hold their own
parameters under plain names, their models (LoggedModels) and the datasets they read (`log_split`).
"""

import contextlib
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

import tlpipe
from tlpipe import settings
from tlpipe.errors import TlpipeError

PIPELINE_RUN_TAG = "tlpipe.pipeline_run"
ROLE_TAG = "tlpipe.role"
RUN_ENV = settings.RUN_ENV
KFP_RUN_ENV = "MLFLOW_RUN_ID"  # the task's nested run, created by Kubeflow Pipelines' MLflow integration


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


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment of this pipeline's runs: the one Kubeflow's MLflow integration chose, or `name`."""
    kfp_run = kfp_step_run(client)
    if kfp_run is not None:
        return kfp_run.info.experiment_id
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


def pipeline_run_ids(pipeline_run: str) -> list[str]:
    """The MLflow parent run of a pipeline run, in whichever experiment it is."""
    client = configure()
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and tags.`{ROLE_TAG}` = 'pipeline'"
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(experiments, filter_string=query)] if experiments else []


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
    run = client.create_run(
        experiment_id(client, experiment),
        run_name=pipeline_run,  # the one identifier of the run, in the report and its file name too
        tags={PIPELINE_RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "tlpipe.code_version": code_version()},
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
    path = f"#/experiments/{run.info.experiment_id}/runs/{run_id}"
    uri = settings.tracking_uri()
    return f"{uri.rstrip('/')}/{path}" if uri.startswith(("http://", "https://")) else path


class SplitDataset(MetaDataset):
    """A dataset split as MLflow lists it among a run's inputs: no data, its name, where it lies, the
    content hash ingest computed as the digest (its first 32 hex digits: MLflow keeps 36 characters),
    and its counts as the profile."""

    def __init__(self, meta: dict, location: str):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        self.meta = meta
        digest = meta["content_hash"].split(":")[-1][:32]
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so for every path
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            source = resolve_dataset_source(artifact_uri(location))
        self.split = meta.get("split") or Path(location).name
        super().__init__(source, name=f"{meta.get('spec', '')}/{self.split}", digest=digest)

    @property
    def profile(self) -> dict:
        return {"images": self.meta["count"], "classes": len(self.meta["classes"]),
                "labelled": self.meta["labelled"], "content_hash": self.meta["content_hash"]}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_splits_to_parent(parent: str, splits: list[SplitDataset]) -> None:
    """Lists the pipeline run's splits among its parent run's datasets too (context: the split)."""
    from mlflow.entities import DatasetInput, InputTag

    configure().log_inputs(parent, datasets=[
        DatasetInput(split._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split.split)])
        for split in splits])


def artifact_uri(path: str) -> str:
    """The URI of a KFP artifact from the path a component sees (KFP mounts s3://b/k at /s3/b/k)."""
    for mount, scheme in (("/s3/", "s3://"), ("/minio/", "s3://"), ("/gcs/", "gs://")):
        if str(path).startswith(mount):
            return scheme + str(path)[len(mount):]
    return str(Path(path).resolve())


def log_split(meta: dict, location: str, context: str) -> SplitDataset:
    """Lists a dataset split among the active run's inputs (`context`: training, validation, test, ...)."""
    dataset = SplitDataset(meta, location)
    mlflow.log_input(dataset, context=context, tags={"split": dataset.split, "images": str(meta["count"])})
    return dataset


class EpochLogger:
    """Per-epoch metrics (throughput included) to the step's MLflow run, and a progress bar line with
    rate and ETA about ten times per step. With a `validation` split (an ImageSet), each epoch's model
    is also scored on it (`val_accuracy`, next to `train_accuracy`): watched, never used to choose an
    epoch. Picklable: rank 0 of data-parallel training calls it too."""

    def __init__(self, step: str, epochs: int, validation=None):
        self.step, self.epochs, self.validation = step, epochs, validation
        self.every = max(1, epochs // 10)
        active = mlflow.active_run()
        self.run_id = active.info.run_id if active else None
        self.started, self.first = time.time(), None
        self._client = None  # made on first use, in the process that trains

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __call__(self, epoch: int, metrics: dict[str, float], model=None) -> None:
        from mlflow.entities import Metric
        from tqdm import tqdm

        if self.first is None:  # the first epoch this process trains: later than 0 after a resume
            self.first = epoch
        logged = {f"train_{k}": v for k, v in metrics.items()}
        if self.validation is not None and len(self.validation) and model is not None:
            metrics = {**metrics, "val_accuracy": validation_accuracy(model, self.validation)}
            logged["val_accuracy"] = metrics["val_accuracy"]
        if self.run_id:
            self._client = self._client or configure()
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in logged.items()])
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            bar = tqdm.format_meter(epoch + 1, self.epochs, time.time() - self.started, ncols=60, unit="epoch",
                                    initial=self.first)
            shown = "  ".join(f"img/s {v:.0f}" if k == "images_per_second" else f"{k} {v:.3f}" for k, v in metrics.items())
            print(f"[{self.step}] epoch {bar}  {shown}", flush=True)


def validation_accuracy(model, data) -> float:
    """The accuracy of `model` on `data`, leaving each of its modules in the train or eval mode it was
    in (a frozen part of a fine-tuned network stays in eval mode)."""
    from tlpipe.models import predict

    modes = [(module, module.training) for module in model.modules()]
    try:
        return float((predict(model, data.images).numpy() == data.labels).mean())
    finally:
        for module, training in modes:
            module.training = training


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


def dataset_hashes(experiment: str, pipeline_run: str) -> dict[str, str]:
    """The dataset hashes ingest tagged on its run (none when this pipeline run reused ingest from the cache)."""
    hashes: dict[str, str] = {}
    for run in _runs(configure(), experiment, pipeline_run, "step"):
        hashes.update({k: v for k, v in run.data.tags.items() if k.startswith("tlpipe.hash.")})
    return hashes


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
