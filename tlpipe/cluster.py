"""Where each pipeline step runs on a Kubeflow cluster, and compiling pipelines for it.

A `Cluster` holds the compile options: the component image, GPUs and the node placement of training
steps, CPU/memory of every step, the memory-backed /dev/shm of data loaders, retries of preempted
training steps, and the Kubernetes Secrets that carry credentials as environment variables (only
their names reach the compiled YAML). Local runs (kfp.local) compile with no Cluster: none of it applies.

Training steps (pretrain, finetune, adapt, and retrain's champion step, which may train) get GPUs and
the trainer image; evaluate and register, which run every model over the test split, get one GPU (or,
with score_on="cpu", CPU nodes with memory enough for the backbone); ingest and the bookkeeping steps
are cheap, run on CPU and use the CPU image, which pulls in a fraction of the time of the CUDA one.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from tlpipe import __version__
from tlpipe.errors import TlpipeError
from tlpipe.settings import RUN_ENV

DEFAULT_IMAGE = f"ghcr.io/tlpipe/tlpipe-trainer:{__version__}"
CPU_IMAGE = f"ghcr.io/tlpipe/tlpipe-cpu:{__version__}"
# The images run as this user (images/*/Dockerfile); pods are made to match.
IMAGE_UID = 1000
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI",)
# Kubeflow Pipelines labels every pod of a run with the run's id.
RUN_LABEL = "pipeline/runid"
MLFLOW_AUTH_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str = "NoSchedule"
    value: str = ""  # empty: operator Exists

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """KEY[=VALUE]:EFFECT, as in `kubectl taint`."""
        body, _, effect = text.rpartition(":")
        key, _, value = body.partition("=")
        if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise TlpipeError(f"toleration '{text}' is not KEY[=VALUE]:EFFECT with EFFECT NoSchedule, "
                              "PreferNoSchedule or NoExecute.")
        return cls(key, effect, value)


@dataclass(frozen=True)
class Resources:
    """Kubernetes quantities; a limit of "" means none."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def __post_init__(self):
        for name, value in vars(self).items():
            if value and not _QUANTITY.match(value):
                raise TlpipeError(f"{name.replace('_', ' ')} '{value}' is not a Kubernetes quantity such as 4, 500m or 16Gi.")


@dataclass(frozen=True)
class Cluster:
    image: str = DEFAULT_IMAGE  # training steps
    light_image: str = CPU_IMAGE  # ingest and the bookkeeping steps; evaluate, register when they score on CPU
    gpus: int = 1  # per training step; 0 trains on CPU nodes
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    train: Resources = Resources("4", "8", "16Gi", "32Gi")
    light: Resources = Resources("1", "2", "2Gi", "4Gi")
    # ingest decodes every image once, one worker process per CPU; its memory does not grow with the data.
    ingest: Resources = Resources("4", "8", "4Gi", "8Gi")
    # evaluate and register run every model over the test split: on a GPU node (the trainer image, the
    # training steps' placement) or, with score_on="cpu" or gpus=0, on CPU nodes with `score` resources.
    score_on: str = "gpu"
    score: Resources = Resources("2", "4", "8Gi", "16Gi")
    shm_size: str = "8Gi"
    retries: int = 3
    retry_backoff: str = "60s"  # doubled after each retry, at most an hour
    s3_secret: str = "tlpipe-s3"
    mlflow_secret: str = "tlpipe-mlflow"
    # The default of the pipelines' checkpoint_root: a retry runs in a new pod, which finds its
    # predecessor's checkpoint only off the container's disk (the chart's bucket by default).
    checkpoint_root: str = "s3://tlpipe/checkpoints"
    # Above 1: pretrain, finetune and adapt run as Kubeflow Trainer jobs of this many nodes, each with `gpus`
    # GPUs and the training resources, on this ClusterTrainingRuntime (tlpipe.trainjob).
    nodes: int = 1
    trainer_runtime: str = "torch-distributed"

    def __post_init__(self):
        if self.gpus < 0 or self.retries < 0:
            raise TlpipeError("gpus and retries must be 0 or more.")
        if self.nodes < 1:
            raise TlpipeError(f"nodes must be 1 or more, got {self.nodes}.")
        check_cluster_checkpoint_root(self.checkpoint_root)
        if self.score_on not in ("gpu", "cpu"):
            raise TlpipeError(f"score_on must be gpu or cpu, got '{self.score_on}'.")
        if not _QUANTITY.match(self.shm_size):
            raise TlpipeError(f"shm size '{self.shm_size}' is not a Kubernetes quantity such as 8Gi.")


def check_cluster_checkpoint_root(location: str) -> None:
    if not location.startswith("s3://") or len(location) <= len("s3://"):
        raise TlpipeError(f"checkpoint_root on a cluster must be an s3:// location, got '{location}': a retried step "
                          "runs in a new pod and finds no checkpoint on the old one's disk.")


class Placement:
    """Builds a pipeline's tasks for a cluster (or for kfp.local when cluster is None)."""

    def __init__(self, cluster: Cluster | None, launchers: dict | None = None):
        """`launchers`: by a training component's name, its multi-node launcher (components/nodes.py)."""
        self.cluster = cluster
        self.launchers = launchers or {}
        self._components = {}
        # Locally "" (checkpoints under $TLPIPE_HOME, tlpipe.steps.common.checkpointed); on a cluster, S3.
        self.checkpoint_root = cluster.checkpoint_root if cluster else ""

    def _component(self, component, image: str):
        """The component, built for `image` (the decorators' image is only the default)."""
        if self.cluster is None or image == component.component_spec.implementation.container.image:
            return component
        key = (component.name, image)
        if key not in self._components:
            from kfp import dsl

            self._components[key] = dsl.component(component.python_func, base_image=image, install_kfp_package=False)
        return self._components[key]

    def train(self, component, **arguments):
        """A GPU training task: accelerators, GPU node placement, /dev/shm, retries, secrets. With several
        nodes, the task launches a Trainer job and all of that passes through to the job's pods."""
        c = self.cluster
        if c is not None and c.nodes > 1 and component.name in self.launchers:
            arguments = {**arguments, "nodes": c.nodes, "node_image": c.image, "trainer_runtime": c.trainer_runtime,
                         "s3_secret": c.s3_secret, "mlflow_secret": c.mlflow_secret}
            task = self._task(self.launchers[component.name], c.light_image, True, arguments)
            task.set_display_name(component.name)
        else:
            task = self._task(component, c.image if c else "", True, arguments)
        if c is None:
            return task
        if c.gpus:
            self._on_gpus(task, c.gpus)
        self._shared_memory(task)
        if c.retries:
            # Training resumes from its checkpoint, so a retry after preemption loses little.
            task.set_retry(num_retries=c.retries, backoff_duration=c.retry_backoff, backoff_factor=2,
                           backoff_max_duration="3600s")
        return self._common(task, c.train)

    def light(self, component, cache: bool = True, **arguments):
        """A cheap CPU task, on the CPU image."""
        c = self.cluster
        task = self._task(component, c.light_image if c else "", cache, arguments)
        return task if c is None else self._common(task, c.light)

    def ingest(self, component, **arguments):
        """The ingest task: the CPU image, with the CPUs its decoding workers use (Cluster.ingest)."""
        c = self.cluster
        task = self._task(component, c.light_image if c else "", True, arguments)
        return task if c is None else self._common(task, c.ingest)

    def score(self, component, cache: bool = True, **arguments):
        """A task that scores models on a whole split (evaluate, register): on one GPU with the trainer image,
        or on CPU with the scoring resources (Cluster.score_on)."""
        c = self.cluster
        if c is None:
            return self._task(component, "", cache, arguments)
        if c.score_on == "cpu" or not c.gpus:
            task = self._task(component, c.light_image, cache, arguments)
            self._shared_memory(task)
            return self._common(task, c.score)
        task = self._task(component, c.image, cache, arguments)
        self._shared_memory(task)
        self._on_gpus(task, 1)
        return self._common(task, c.train)

    def _task(self, component, image: str, cache: bool, arguments: dict):
        task = self._component(component, image)(**arguments)
        if not cache:
            task.set_caching_options(False)
        return task

    def _shared_memory(self, task) -> None:
        """DataLoader workers (training, and scoring a sharded split) pass batches through /dev/shm, which
        is 64 MB in a pod by default."""
        from kfp import kubernetes

        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=self.cluster.shm_size)

    def _on_gpus(self, task, gpus: int) -> None:
        from kfp import kubernetes

        c = self.cluster
        task.set_accelerator_type(c.gpu_resource).set_accelerator_limit(gpus)
        for key, value in c.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in c.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator="Equal" if t.value else "Exists",
                                      value=t.value or None, effect=t.effect)

    def _common(self, task, resources: Resources):
        from kfp import kubernetes

        c = self.cluster
        task.set_cpu_request(resources.cpu_request).set_memory_request(resources.memory_request)
        if resources.cpu_limit:
            task.set_cpu_limit(resources.cpu_limit)
        if resources.memory_limit:
            task.set_memory_limit(resources.memory_limit)
        kubernetes.use_secret_as_env(task, c.s3_secret, {k: k for k in S3_KEYS})
        kubernetes.use_secret_as_env(task, c.mlflow_secret, {k: k for k in MLFLOW_KEYS})
        kubernetes.use_secret_as_env(task, c.mlflow_secret, {k: k for k in MLFLOW_AUTH_KEYS}, optional=True)
        kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
        # The run's id from the pod's label, not a component input, which would key every cache entry to one run.
        kubernetes.use_field_path_as_env(task, RUN_ENV, f"metadata.labels['{RUN_LABEL}']")
        return task


PIPELINES_GROUP = "tlpipe.pipelines"


def pipelines() -> dict:
    """Pipeline builders by name (build(cluster) returns the KFP pipeline), as the installed DAG packages
    declare them (pyproject's `tlpipe.pipelines` entry points): the library never imports a DAG package
    by name, and a team's own pipelines join the command line by declaring theirs."""
    from importlib.metadata import entry_points

    found = {point.name: point for point in entry_points(group=PIPELINES_GROUP)}
    product = ("transfer", "retrain", "layer-sweep")  # the product's own first, as the docs list them
    names = sorted(found, key=lambda n: (product.index(n) if n in product else len(product), n))
    return {name: found[name].load() for name in names}


def pipeline(name: str, cluster: Cluster | None = None):
    builders = pipelines()
    if name not in builders:
        raise TlpipeError(f"unknown pipeline '{name}'; choose one of {', '.join(builders)}.")
    return builders[name](cluster)


def compile_pipeline(name: str, out_dir: str | Path, cluster: Cluster) -> Path:
    """Writes <out_dir>/<name>.yaml: KFP IR with the cluster's placement."""
    from kfp import compiler

    out = Path(out_dir) / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline(name, cluster), str(out))
    return out
