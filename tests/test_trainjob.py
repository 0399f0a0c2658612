"""Training steps as multi-node Kubeflow Trainer jobs (`tlpipe compile --nodes N`): the compiled pipelines'
launcher tasks (and the KFP 2.17 backend compiler on them), and the TrainJob a launcher writes, validated
against the Trainer v2.3.0 CRD's schema (tests/data). The nodes' side, torchrun running tlpipe.launch on
two nodes, runs for real in tests/test_distributed.py."""

import copy
import subprocess
from dataclasses import dataclass

import jsonschema
import pytest
import yaml
from kfp.dsl import TaskConfig

from tests.test_kubeflow import REPO, compiled, load_ir, tasks_of
from tlpipe.cluster import CPU_IMAGE, DEFAULT_IMAGE, RUN_LABEL, Cluster
from tlpipe.errors import TlpipeError
from tlpipe.settings import RUN_ENV
from tlpipe.trainjob import job_for, job_name

CRD = REPO / "tests" / "data" / "trainer.kubeflow.org_trainjobs.v2.3.0.yaml"
ON_NODES = Cluster(nodes=2, gpus=4)


def trainjob_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", ["transfer", "retrain"])
def test_multi_node_pipelines_train_through_launchers_that_pass_the_gpu_placement_on(name):
    spec, executors = load_ir(compiled(name, ON_NODES))
    tasks = tasks_of(spec)
    launchers = {task: body for task, body in tasks.items() if body["componentRef"]["name"].endswith("-on-nodes")
                 or "-on-nodes-" in body["componentRef"]["name"]}
    expected = {"pretrain", "finetune", "target-only", "adapt"} if name == "transfer" else {"adapt"}
    assert {body["taskInfo"]["name"] for body in launchers.values()} >= expected
    assert not any(task.startswith(("champion", "evaluate")) for task in launchers)  # one node: unchanged
    for task, body in launchers.items():
        component = spec["components"][body["componentRef"]["name"]]
        passed = {p["field"] for p in component["taskConfigPassthroughs"]}
        assert passed == {"RESOURCES", "KUBERNETES_NODE_SELECTOR", "KUBERNETES_TOLERATIONS", "KUBERNETES_AFFINITY",
                          "KUBERNETES_VOLUMES", "ENV"}, task
        parameters = body["inputs"]["parameters"]
        assert parameters["nodes"]["runtimeValue"]["constant"] == 2
        assert parameters["node_image"]["runtimeValue"]["constant"] == DEFAULT_IMAGE
        executor = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["image"] == CPU_IMAGE  # the launcher; the nodes run node_image
        assert container["resources"]["accelerator"]["resourceCount"] == "4"  # passed through to each node
        assert executors[executor]["tolerations"] and executors[executor]["emptyDirMounts"]


def test_one_node_pipelines_have_no_launchers():
    spec, _ = load_ir(compiled("transfer"))
    assert not any("on-nodes" in body["componentRef"]["name"] for body in tasks_of(spec).values())
    with pytest.raises(TlpipeError, match="nodes must be 1 or more"):
        Cluster(nodes=0)


def test_the_kubeflow_backend_compiler_accepts_multi_node_pipelines():
    check = REPO.parent / "shared" / "tools" / "kfp-backend" / "kfp-backend-check"
    if not check.is_file():
        pytest.skip(f"{check} is not here (it ships with the tlpipe workspace, not the repository)")
    files = [str(compiled(name, ON_NODES)) for name in ("transfer", "retrain", "layer-sweep", "source-free")]
    result = subprocess.run([str(check), *files], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sum("validate-ok" in line for line in result.stdout.splitlines() if line.startswith("RESULT")) == len(files)


@dataclass
class Artifact:
    uri: str
    path: str = ""


def launcher_parameters() -> dict:
    """An adapt launcher's locals as KFP gives them on the cluster: artifacts (S3 URIs), values, and the
    TaskConfig the driver fills with what the task set for the GPU pod."""
    return {
        "source_model": Artifact("s3://tlpipe/root/run-1/pretrain/model"),
        "source_train": Artifact("s3://tlpipe/root/run-1/ingest/source_train"),
        "target_unlabelled": Artifact("s3://tlpipe/root/run-1/ingest/target_unlabelled"),
        "target_labelled": Artifact("s3://tlpipe/root/run-1/ingest/target_labelled"),
        "target_val": Artifact("s3://tlpipe/root/run-1/ingest/target_val"),
        "model": Artifact("s3://tlpipe/root/run-1/adapt/model", "/s3/tlpipe/root/run-1/adapt/model"),
        "method": "adamatch", "epochs": 30, "lr": 0.01, "bottleneck": -1, "pretrained_weights": "",
        "checkpoint_root": "s3://tlpipe/checkpoints", "nodes": 2, "node_image": DEFAULT_IMAGE,
        "trainer_runtime": "torch-distributed", "s3_secret": "tlpipe-s3", "mlflow_secret": "tlpipe-mlflow",
        "exit_on_user_error": print,  # a component's locals hold its imports too
        "task_config": TaskConfig(
            resources={"limits": {"nvidia.com/gpu": "4", "cpu": "8", "memory": "32Gi"},
                       "requests": {"cpu": "4", "memory": "16Gi"}},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            node_selector={"nvidia.com/gpu.present": "true"},
            env=[{"name": "TLPIPE_EXTRA", "value": "1"}, {"name": RUN_ENV, "value": "stale"}],
            volumes=[{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
            volume_mounts=[{"name": "dshm", "mountPath": "/dev/shm"}],
        ),
    }


def test_the_trainjob_carries_the_tasks_placement_and_validates_against_the_trainer_crd():
    spec, job = job_for("adapt", launcher_parameters(), "run-1", "team-a")
    jsonschema.validate(job, trainjob_schema())
    assert job["metadata"] == {"name": job_name("adapt", "run-1"), "namespace": "team-a",
                               "labels": {RUN_LABEL: "run-1"}}
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4  # one process per GPU of a node
    assert trainer["image"] == DEFAULT_IMAGE and trainer["command"][:3] == ["torchrun", "-m", "tlpipe.launch"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e for e in trainer["env"]}
    assert env[RUN_ENV] == {"name": RUN_ENV, "value": "run-1"} and env["TLPIPE_EXTRA"]["value"] == "1"
    assert [e["name"] for e in trainer["env"]].count(RUN_ENV) == 1
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tlpipe-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    [patch] = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]
    assert pod["securityContext"]["runAsUser"] == 1000
    # What tlpipe.launch gets: inputs by location, plain values by value, the model beside the launcher's.
    assert spec["inputs"]["source_train"] == "s3://tlpipe/root/run-1/ingest/source_train"
    assert spec["parameters"]["method"] == "adamatch" and "exit_on_user_error" not in spec["parameters"]
    assert spec["output"] == "s3://tlpipe/root/run-1/adapt/model.trainjob/model"
    assert spec["facts"].startswith("s3://tlpipe/root/run-1/adapt/model.trainjob/")


def test_the_crd_schema_refuses_a_malformed_trainjob():
    """Negative control: the schema does check what tlpipe writes."""
    _, job = job_for("pretrain", launcher_parameters(), "run-1", "team-a")
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, trainjob_schema())
    bad = copy.deepcopy(job)
    del bad["spec"]["runtimePatches"][0]["manager"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, trainjob_schema())


def test_artifacts_in_kfps_bundled_store_are_read_through_s3_and_others_refused():
    parameters = launcher_parameters()
    parameters["source_train"] = Artifact("minio://mlpipeline/v2/artifacts/run-1/ingest/source_train")
    spec, _ = job_for("adapt", parameters, "run-1", "team-a")
    assert spec["inputs"]["source_train"] == "s3://mlpipeline/v2/artifacts/run-1/ingest/source_train"
    parameters["source_train"] = Artifact("gs://bucket/root/source_train")
    with pytest.raises(TlpipeError, match="reads its inputs from S3"):
        job_for("adapt", parameters, "run-1", "team-a")


def test_job_names_are_kubernetes_names_after_step_and_run():
    name = job_name("finetune", "8f14e45f-ceea-467f-a0e6-36e7e4b7a5d2")
    assert name == "tlpipe-finetune-8f14e45fceea" and len(name) <= 40
    assert job_name("adapt", "") == "tlpipe-adapt-run"
