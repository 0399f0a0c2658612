"""A training step on several nodes, as a Kubeflow Trainer job (`tlpipe compile --nodes N`).

The step's KFP task becomes a launcher (components/nodes.py): a small pod that creates a TrainJob on the
`torch-distributed` ClusterTrainingRuntime (torchrun on every node), waits for it, prints its rank-0
node's log, and hands the model back to the pipeline. What the task was given for the GPU pod (GPU and
CPU resources, node selector, tolerations, affinity, env, /dev/shm) reaches the TrainJob through KFP's
task config passthroughs instead of the launcher pod. Inputs and the model go through S3 (the pipeline
root), so no volume is shared between the launcher and the nodes: rank 0 downloads the inputs, trains
with the other ranks, uploads the model and then its facts beside the model's artifact.

`manifest()` builds the TrainJob (tested against the Trainer CRD's schema); `run_on_nodes()` is the
launcher's body, which needs a cluster.
"""

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

from tlpipe.errors import TlpipeError

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINER_VERSION = "v2.3.0"  # the Kubeflow Trainer release whose TrainJob API this writes (README)
DEFAULT_RUNTIME = "torch-distributed"
NODE = "node"  # the runtime's replicated job and container
PATCH_MANAGER = "tlpipe.org/launcher"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
POLL_SECONDS = 10


def job_name(step: str, pipeline_run: str) -> str:
    """After the step and its pipeline run; short enough for the JobSet's pod names (Kubernetes' 63)."""
    run = re.sub(r"[^a-z0-9]", "", pipeline_run.lower())[:12] or "run"
    return f"tlpipe-{re.sub(r'[^a-z0-9]', '', step.lower())[:12]}-{run}"


def launch_spec(step: str, parameters: dict, inputs: dict[str, str], model_uri: str) -> dict:
    """What tlpipe.launch reads on every node: the step, its plain parameters, its inputs' locations, and
    where rank 0 puts the model and then its facts (beside the launcher's own model artifact)."""
    staging = f"{model_uri.rstrip('/')}.trainjob"
    return {"step": step, "parameters": parameters, "inputs": inputs,
            "output": f"{staging}/model", "facts": f"{staging}/facts.json"}


def manifest(name: str, namespace: str, image: str, nodes: int, spec: dict, task_config, env: list[dict],
             runtime: str = DEFAULT_RUNTIME, labels: dict[str, str] | None = None) -> dict:
    """The TrainJob: `nodes` x the task's resources, one process per GPU of a node (1 without GPUs)."""
    from tlpipe.cluster import IMAGE_UID

    resources = task_config.resources or {}
    gpus = max([int(float(v)) for k, v in (resources.get("limits") or {}).items() if k.endswith("/gpu")] or [0])
    pod = {
        "securityContext": {"runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID, "runAsNonRoot": True},
        "containers": [{"name": NODE, **({"volumeMounts": task_config.volume_mounts} if task_config.volume_mounts else {})}],
    }
    for key, value in (("nodeSelector", task_config.node_selector), ("tolerations", task_config.tolerations),
                       ("affinity", task_config.affinity), ("volumes", task_config.volumes)):
        if value:
            pod[key] = value
    trainer = {
        "image": image,
        "command": ["torchrun", "-m", "tlpipe.launch", json.dumps(spec, separators=(",", ":"))],
        "numNodes": nodes,
        "numProcPerNode": max(1, gpus),
        # The launcher's own values (the run id, the Secrets) over any of the same name the task forwarded.
        "env": [e for e in task_config.env or [] if e["name"] not in {mine["name"] for mine in env}] + env,
    }
    if resources:
        trainer["resourcesPerNode"] = resources
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "runtimeRef": {"name": runtime},
            "trainer": trainer,
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
        },
    }


def secret_env(secrets: dict[str, tuple[tuple[str, bool], ...]]) -> list[dict]:
    """Env entries from Secrets ({secret: ((key, optional), ...)}), as the step's pod gets them."""
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, **({"optional": True} if optional else {})}}}
            for secret, keys in secrets.items() for key, optional in keys]


def _on_s3(uri: str) -> str:
    """An artifact's URI as the nodes read it: KFP's bundled object store names its bucket minio://."""
    if uri.startswith("minio://"):
        return "s3://" + uri.removeprefix("minio://")
    if not uri.startswith("s3://"):
        raise TlpipeError(f"a multi-node step reads its inputs from S3, but this pipeline's root gives '{uri}': "
                          "set the pipeline root to an s3:// (or minio://) location.")
    return uri


def job_for(step: str, parameters: dict, pipeline_run: str, namespace: str) -> tuple[dict, dict]:
    """The launcher component's parameters (its locals) as (launch spec, TrainJob): artifacts go by location
    (their S3 URIs), everything else by value; the nodes get the run id and the step pod's Secrets."""
    from tlpipe.cluster import MLFLOW_AUTH_KEYS, MLFLOW_KEYS, RUN_LABEL, S3_KEYS
    from tlpipe.settings import RUN_ENV

    p = dict(parameters)
    task_config, model = p.pop("task_config"), p.pop("model")
    nodes, image, runtime = p.pop("nodes"), p.pop("node_image"), p.pop("trainer_runtime")
    s3_secret, mlflow_secret = p.pop("s3_secret"), p.pop("mlflow_secret")
    if nodes < 1:
        raise TlpipeError(f"nodes={nodes} must be 1 or more.")
    inputs = {name: _on_s3(value.uri) for name, value in p.items() if hasattr(value, "uri")}
    plain = {name: value for name, value in p.items()
             if name not in inputs and isinstance(value, (str, int, float, bool, type(None)))}
    spec = launch_spec(step, plain, inputs, _on_s3(model.uri))
    env = [{"name": RUN_ENV, "value": pipeline_run}, *secret_env({
        s3_secret: tuple((k, False) for k in S3_KEYS),
        mlflow_secret: (*((k, False) for k in MLFLOW_KEYS), *((k, True) for k in MLFLOW_AUTH_KEYS))})]
    job = manifest(job_name(step, pipeline_run), namespace, image, nodes, spec, task_config, env, runtime,
                   {RUN_LABEL: pipeline_run})
    return spec, job


def run_on_nodes(step: str, parameters: dict) -> dict:
    """The launcher component's body: the step's TrainJob created, followed to its end, the model fetched
    into the launcher's output artifact; returns the step's facts. A cancelled run deletes the job."""
    from kubernetes import client, config

    from tlpipe import storage
    from tlpipe.tracking import current_pipeline_run

    namespace = Path(NAMESPACE_FILE).read_text().strip()
    spec, job = job_for(step, parameters, current_pipeline_run(), namespace)
    name = job["metadata"]["name"]
    config.load_incluster_config()
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    _create(api, namespace, name, job)

    def cancelled(*_) -> None:  # KFP stops a cancelled run's pods with SIGTERM: the job goes with it
        _delete(api, namespace, name)
        sys.exit(143)

    previous = signal.signal(signal.SIGTERM, cancelled)
    try:
        reason = _follow(api, core, namespace, name)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if reason:
        raise TlpipeError(f"the {step} TrainJob {name} failed: {reason} (kubectl -n {namespace} describe trainjob {name}).")
    facts = json.loads(storage.read_bytes(spec["facts"]))  # written after the model: the model is whole
    storage.download(spec["output"], parameters["model"].path)
    _delete(api, namespace, name)
    return facts


def _create(api, namespace: str, name: str, job: dict) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    except ApiException as error:
        if error.status == 409:  # a retried step: its failed predecessor's job goes; training resumes from the checkpoint
            _delete(api, namespace, name, wait=True)
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
        elif error.status in (403, 404):
            raise TlpipeError(f"cannot create TrainJobs in namespace {namespace} ({error.reason}): is Kubeflow Trainer "
                              f"{TRAINER_VERSION} installed, and may the pipeline's service account create trainjobs "
                              "(the chart's trainerRbac.create)?") from None
        else:
            raise


def _delete(api, namespace: str, name: str, wait: bool = False) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground")
    except ApiException as error:
        if error.status != 404:
            raise
    while wait:
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            time.sleep(2)
        except ApiException:
            return


def _follow(api, core, namespace: str, name: str) -> str:
    """Waits for the TrainJob to end, printing its rank-0 pod's log; "" when it completed, else why it failed."""
    streaming, last_error = False, [""]
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions", []) if c.get("status") == "True"}
        streaming = streaming or _stream_rank_0(core, namespace, name, last_error)
        if "Complete" in conditions:
            return ""
        if "Failed" in conditions:
            return last_error[0] or conditions["Failed"].get("message", "no reason given")
        time.sleep(POLL_SECONDS)


def _stream_rank_0(core, namespace: str, name: str, last_error: list) -> bool:
    """Starts printing the rank-0 pod's log (its last `tlpipe: error:` sentence kept), once that pod has
    started; whether it has."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name},"
                                                            "batch.kubernetes.io/job-completion-index=0").items
    running = [pod for pod in pods if pod.status.phase in ("Running", "Succeeded", "Failed")]
    if not running:
        return False

    def stream() -> None:
        from kubernetes import watch

        for line in watch.Watch().stream(core.read_namespaced_pod_log, running[0].metadata.name, namespace,
                                         container=NODE, follow=True):
            print(line, flush=True)
            if line.startswith("tlpipe: error: "):
                last_error[0] = line.removeprefix("tlpipe: error: ")

    threading.Thread(target=stream, daemon=True).start()
    return True
