"""The cluster side: compiled IR (placement, secrets, retries, caching), staleness of pipelines/compiled/,
and `tlpipe submit` / `tlpipe schedule` against a local fake of the KFP v2beta1 REST API."""

import filecmp
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.fake_kfp import FakeKfp
from tlpipe.cli import main
from tlpipe.cluster import CPU_IMAGE, Cluster, Resources, Toleration, compile_pipeline, pipelines

REPO = Path(__file__).resolve().parents[1]
TRAINING = {"pretrain", "finetune", "adapt", "champion", "layer-transfer"}
SCORING = {"evaluate", "evaluate-retrain", "register", "predict"}
LIGHT = {"data-version", "strategy-uses-source", "ingest", "close-run", "layer-sweep-report", "registered-model"}


_COMPILED: dict[str, Path] = {}


def compiled(name: str, cluster: Cluster = Cluster()) -> Path:
    """The pipeline compiled for `cluster`, once per test session (compiling takes seconds)."""
    key = f"{name} {cluster!r}"
    if key not in _COMPILED:
        _COMPILED[key] = compile_pipeline(name, tempfile.mkdtemp(prefix="tlpipe-ir-"), cluster)
    return _COMPILED[key]


def load_ir(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def tasks_of(spec: dict, steps_only: bool = True) -> dict:
    """The pipeline's tasks, at the top level and inside its exit handler and loops; with steps_only,
    only those that run a container (not the exit handler's or a loop's DAG)."""
    tasks, dags = {}, [spec["root"]["dag"]]
    while dags:
        for name, body in dags.pop()["tasks"].items():
            dag = spec["components"][body["componentRef"]["name"]].get("dag")
            if dag:
                dags.append(dag)
            if not (dag and steps_only):
                tasks[name] = body
    return tasks


def pipeline_parameter(name: str) -> dict:
    """How a task inside the exit handler receives the pipeline parameter `name`."""
    return {"componentInputParameter": f"pipelinechannel--{name}"}


def executor_of(spec: dict, task: str) -> str:
    return tasks_of(spec)[task]["componentRef"]["name"].replace("comp-", "exec-")


def kind(task: str) -> str:
    base = task.rsplit("-", 1)[0] if task[-1].isdigit() else task
    return "train" if base in TRAINING else "score" if base in SCORING else "ingest" if base == "ingest" else "light"


def test_compiled_pipelines_are_up_to_date(tmp_path):
    for name in pipelines():
        fresh = compiled(name)
        committed = REPO / "pipelines" / "compiled" / f"{name}.yaml"
        assert committed.exists(), f"{committed} is missing: run `tlpipe compile`"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed} is stale: run `tlpipe compile`"


@pytest.mark.parametrize("name", ["transfer", "retrain", "source-free"])
def test_compiled_ir_places_steps(tmp_path, name):
    cluster = Cluster(
        image="registry.example.com/tlpipe/trainer:1.2.3", light_image="registry.example.com/tlpipe/cpu:1.2.3",
        gpus=2, gpu_resource="nvidia.com/gpu",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}, tolerations=(Toleration("gpu", "NoSchedule", "l4"),),
        train=Resources("6", "12", "24Gi", "48Gi"), light=Resources("500m", "", "1Gi", "2Gi"),
        ingest=Resources("3", "6", "5Gi", "7Gi"), shm_size="4Gi", retries=5, s3_secret="team-s3",
        mlflow_secret="team-mlflow",
    )
    spec, platform = load_ir(compiled(name, cluster))
    tasks = tasks_of(spec)
    assert {kind(t) for t in tasks} == {"train", "score", "ingest", "light"}
    for task, body in tasks.items():
        executor = executor_of(spec, task)
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        k8s = platform[executor]
        # Light steps never pull the CUDA image; scoring steps use it, on one GPU.
        assert container["image"] == f"registry.example.com/tlpipe/{'cpu' if kind(task) in ('light', 'ingest') else 'trainer'}:1.2.3"
        resources = container["resources"]
        secrets = {(s["secretName"], e["secretKey"], e["envVar"], s["optional"]) for s in k8s["secretAsEnv"] for e in s["keyToEnv"]}
        assert ("team-s3", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", False) in secrets
        assert ("team-mlflow", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", False) in secrets
        assert ("team-mlflow", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_TOKEN", True) in secrets
        assert k8s["securityContext"]["runAsNonRoot"] is True
        if kind(task) == "train":
            assert resources["accelerator"]["resourceCount"] == "2" and resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["resourceCpuRequest"] == "6" and resources["resourceMemoryLimit"] == "48Gi"
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert k8s["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "l4", "effect": "NoSchedule"}]
            assert k8s["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "4Gi",
                                              "volumeName": "dshm"}]
            assert body["retryPolicy"] == {"maxRetryCount": 5, "backoffDuration": "60s", "backoffFactor": 2.0,
                                           "backoffMaxDuration": "3600s"}
        elif kind(task) == "score":
            assert resources["accelerator"]["resourceCount"] == "1" and resources["resourceMemoryLimit"] == "48Gi"
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert k8s["emptyDirMounts"][0]["mountPath"] == "/dev/shm"  # for the workers that decode the split
            assert "retryPolicy" not in body
        elif kind(task) == "ingest":
            assert "accelerator" not in resources and "nodeSelector" not in k8s
            assert resources["resourceCpuLimit"] == "6" and resources["resourceMemoryLimit"] == "7Gi"
        else:
            assert "accelerator" not in resources and "nodeSelector" not in k8s and "tolerations" not in k8s
            assert resources["resourceCpuRequest"] == "500m" and "resourceCpuLimit" not in resources
            assert "emptyDirMounts" not in k8s and "retryPolicy" not in body
        # Steps learn their pipeline run from the pod's label, not from an input.
        assert k8s["fieldPathAsEnv"] == [{"name": "TLPIPE_PIPELINE_RUN", "fieldPath": "metadata.labels['pipeline/runid']"}]


@pytest.mark.parametrize("name", ["transfer", "retrain", "layer-sweep"])
def test_caching_can_hit_and_stays_off_where_data_changes_behind_a_name(tmp_path, name):
    first, second = (compile_pipeline(name, tmp_path / d, Cluster()) for d in ("a", "b"))
    spec = load_ir(first)[0]
    tasks = tasks_of(spec)
    # What only varies from run to run (the run's id, name or time) is in no task's inputs: the cache key
    # of a training step is its parameters, its image and the names of its input artifacts.
    assert "{{$.pipeline_job" not in first.read_text()
    assert {t: body["inputs"] for t, body in tasks.items()} == {t: body["inputs"] for t, body in tasks_of(load_ir(second)[0]).items()}
    uncached = {t for t, body in tasks.items() if not body.get("cachingOptions", {}).get("enableCache")}
    # data_version lists the data now, register and champion read the registry now, close-run ends this run.
    expected = {"data-version", "close-run"} | ({"register"} if name != "layer-sweep" else set())
    assert uncached == expected | ({"champion"} if name == "retrain" else set())
    assert {kind(t) for t in set(tasks) - uncached} >= {"train"}
    # ingest, cached, is keyed by what data_version found: a changed folder misses the cache.
    assert tasks["ingest"]["inputs"]["parameters"]["data_version"] == {
        "taskOutputParameter": {"producerTask": "data-version", "outputParameterKey": "Output"}}


def conditions_of(spec: dict) -> dict:
    """Each container task's display name and the conditions it runs under (outermost first)."""
    found, dags = [], [(spec["root"]["dag"], ())]
    while dags:
        dag, conditions = dags.pop()
        for body in dag["tasks"].values():
            inner = spec["components"][body["componentRef"]["name"]].get("dag")
            condition = body.get("triggerPolicy", {}).get("condition")
            if inner:
                dags.append((inner, conditions + ((condition,) if condition else ())))
            else:
                found.append((body["taskInfo"]["name"], conditions, body))
    return found


@pytest.mark.parametrize("name", ["transfer", "retrain"])
def test_only_strategies_that_train_on_the_source_download_source_train(tmp_path, name):
    spec, _ = load_ir(compiled(name, Cluster()))
    uses_source = "inputs.parameter_values['pipelinechannel--strategy-uses-source-Output'] == true"
    finetunes = {(shown, conditions): "source_train" in body["inputs"]["artifacts"]
                 for shown, conditions, body in conditions_of(spec) if shown in ("finetune", "target-only")}
    expected = {("finetune", (uses_source,)): True, ("finetune", (f"!({uses_source})",)): False}
    if name == "transfer":
        expected[("target-only", ())] = False
    assert finetunes == expected


@pytest.mark.parametrize("name", ["transfer", "retrain", "layer-sweep", "predict", "source-free"])
def test_every_step_runs_inside_an_exit_handler_that_closes_the_mlflow_run(tmp_path, name):
    spec, _ = load_ir(compiled(name, Cluster()))
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "close-run"}
    close = root["close-run"]
    assert close["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert close["dependentTasks"] == ["exit-handler-1"]
    assert close["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}


def test_predict_runs_on_one_gpu_uncached_with_the_model_and_images_it_is_given(tmp_path):
    spec, platform = load_ir(compiled("predict", Cluster(gpus=2, shm_size="4Gi")))
    tasks = tasks_of(spec)
    assert set(tasks) == {"predict", "close-run"}
    body = tasks["predict"]
    assert not body.get("cachingOptions", {}).get("enableCache")  # the alias moves, the folder changes
    for name in ("model", "images", "publish_to"):
        assert body["inputs"]["parameters"][name] == pipeline_parameter(name)
    executor = executor_of(spec, "predict")
    assert spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert platform[executor]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"  # for the workers that decode the files
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["model"] == "models:/tlpipe@champion"
    assert all(v.get("description") for v in spec["root"]["inputDefinitions"]["parameters"].values())


def test_layer_sweep_fans_out_over_blocks_on_gpus_and_collects_the_points(tmp_path):
    spec, platform = load_ir(compiled("layer-sweep", Cluster(gpus=1)))
    (loop_name,) = [t for t in tasks_of(spec, steps_only=False) if t.startswith("for-loop-")]
    loop = tasks_of(spec, steps_only=False)[loop_name]
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--blocks"}
    assert spec["root"]["inputDefinitions"]["parameters"]["blocks"]["parameterType"] == "LIST"
    inner = spec["components"][f"comp-{loop_name}"]["dag"]["tasks"]
    assert list(inner) == ["layer-transfer"]
    executor = inner["layer-transfer"]["componentRef"]["name"].replace("comp-", "exec-")
    assert spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "emptyDirMounts" in platform[executor]
    report = tasks_of(spec)["layer-sweep-report"]
    assert report["inputs"]["artifacts"]["points"]["taskOutputArtifact"]["producerTask"] == loop_name
    assert "accelerator" not in spec["deploymentSpec"]["executors"][executor_of(spec, "layer-sweep-report")]["container"]["resources"]


@pytest.mark.parametrize("name, source_trained", [("transfer", {"pretrain", "adapt"}), ("retrain", {"champion", "adapt"}),
                                                   ("layer-sweep", {"pretrain"})])
def test_augmentation_reaches_exactly_the_steps_that_train_on_those_images(tmp_path, name, source_trained):
    spec, _ = load_ir(compiled(name, Cluster()))
    tasks = tasks_of(spec)
    wired = {task for task, body in tasks.items()
             if body.get("inputs", {}).get("parameters", {}).get("source_augment") == pipeline_parameter("source_augment")}
    assert wired == source_trained
    assert spec["root"]["inputDefinitions"]["parameters"]["source_augment"]["defaultValue"] == "auto"
    if name != "layer-sweep":  # the labelled target images: finetune, target-only, and adapt's dann+finetune phase
        target_wired = {task for task, body in tasks.items()
                        if body.get("inputs", {}).get("parameters", {}).get("augment") == pipeline_parameter("target_augment")}
        assert target_wired == {t for t in tasks if t.startswith("finetune") or t == "target-only"}, target_wired
        assert tasks["adapt"]["inputs"]["parameters"]["target_augment"] == pipeline_parameter("target_augment")


@pytest.mark.parametrize("name, evaluator", [("transfer", "evaluate"), ("retrain", "evaluate-retrain")])
def test_evaluate_selects_on_validation_and_register_gates_with_the_pipeline_parameters(tmp_path, name, evaluator):
    spec, _ = load_ir(compiled(name, Cluster()))
    tasks = tasks_of(spec)
    artifacts = tasks[evaluator]["inputs"]["artifacts"]
    for split in ("target_val", "source_val", "target_unlabelled", "target_test"):
        assert artifacts[split]["taskOutputArtifact"] == {"producerTask": "ingest", "outputArtifactKey": split}
    assert tasks[evaluator]["inputs"]["parameters"]["select_by"] == pipeline_parameter("select_by")
    for gate in ("gate_alpha", "gate_margin"):
        assert tasks["register"]["inputs"]["parameters"][gate] == pipeline_parameter(gate)
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert (defaults["select_by"], defaults["gate_alpha"], defaults["target_val_per_class"]) == ("auto", 0.05, 10)


def test_the_kubeflow_backend_compiler_accepts_every_committed_pipeline():
    """The Kubeflow Pipelines 2.17 API server's own IR -> Argo Workflow compiler and Argo's validation,
    where the workspace provides them (shared/tools/kfp-backend); a user's clone skips."""
    import subprocess

    check = REPO.parent / "shared" / "tools" / "kfp-backend" / "kfp-backend-check"
    if not check.is_file():
        pytest.skip(f"{check} is not here (it ships with the tlpipe workspace, not the repository)")
    files = sorted(str(p) for p in (REPO / "pipelines" / "compiled").glob("*.yaml"))
    result = subprocess.run([str(check), *files], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("RESULT") and "validate-ok" in line]
    assert len(passed) == len(files)


def test_compiled_ir_holds_no_secret_values(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa55-value-456")
    for name in pipelines():
        text = compile_pipeline(name, tmp_path, Cluster()).read_text()
        assert "s3cr3t-value-123" not in text and "pa55-value-456" not in text


def test_cpu_cluster_requests_no_gpu(tmp_path):
    spec, platform = load_ir(compiled("transfer", Cluster(gpus=0)))
    executor = executor_of(spec, "pretrain")
    assert "accelerator" not in spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
    assert "tolerations" not in platform[executor] and "emptyDirMounts" in platform[executor]
    for task in SCORING & set(tasks_of(spec)):
        container = spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"]
        assert "accelerator" not in container["resources"] and container["image"] == CPU_IMAGE


@pytest.mark.parametrize("name", ["transfer", "retrain"])
def test_scoring_on_cpu_gets_the_memory_asked_for(tmp_path, name):
    assert main(["compile", name, "-o", str(tmp_path), "--score-on", "cpu", "--score-memory", "24Gi:40Gi"]) == 0
    spec, platform = load_ir(tmp_path / f"{name}.yaml")
    scoring = SCORING & set(tasks_of(spec))
    assert scoring >= {"register"} and len(scoring) == 2
    for task in scoring:
        executor = executor_of(spec, task)
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["image"] == CPU_IMAGE and "accelerator" not in container["resources"]
        assert container["resources"]["resourceMemoryRequest"] == "24Gi"
        assert container["resources"]["resourceMemoryLimit"] == "40Gi"
        assert "nodeSelector" not in platform[executor]
        assert platform[executor]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"


def test_ingest_gets_the_cpus_its_decoding_workers_use(tmp_path):
    assert main(["compile", "transfer", "-o", str(tmp_path / "default")]) == 0
    assert main(["compile", "transfer", "-o", str(tmp_path / "asked"), "--ingest-cpu", "16:32", "--ingest-memory", "6Gi:12Gi"]) == 0
    for folder, (cpu, memory) in (("default", ("8", "8Gi")), ("asked", ("32", "12Gi"))):
        spec, platform = load_ir(tmp_path / folder / "transfer.yaml")
        container = spec["deploymentSpec"]["executors"][executor_of(spec, "ingest")]["container"]
        assert container["image"] == CPU_IMAGE and "accelerator" not in container["resources"]
        assert (container["resources"]["resourceCpuLimit"], container["resources"]["resourceMemoryLimit"]) == (cpu, memory)
        data_version = spec["deploymentSpec"]["executors"][executor_of(spec, "data-version")]["container"]
        assert data_version["resources"]["resourceCpuLimit"] == "2"  # the light steps keep the light placement


def test_compile_cli_writes_and_checks_options(tmp_path, capsys):
    assert main(["compile", "all", "-o", str(tmp_path), "--gpus", "4", "--node-selector", "pool=a100",
                 "--toleration", "nvidia.com/gpu:NoSchedule", "--image", "example.org/t:9",
                 "--checkpoint-root", "s3://team/ckpt"]) == 0
    spec, platform = load_ir(tmp_path / "transfer.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["checkpoint_root"]["defaultValue"] == "s3://team/ckpt"
    images = {task: spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"]["image"]
              for task in ("adapt", "evaluate", "ingest")}
    assert images == {"adapt": "example.org/t:9", "evaluate": "example.org/t:9", "ingest": CPU_IMAGE}
    executor = executor_of(spec, "adapt")
    assert spec["deploymentSpec"]["executors"][executor]["container"]["resources"]["accelerator"]["count"] == "4"
    assert platform[executor]["nodeSelector"]["labels"] == {"pool": "a100"}
    assert (tmp_path / "retrain.yaml").exists()
    assert main(["compile", "all", "-o", str(tmp_path), "--toleration", "gpu"]) == 2
    assert main(["compile", "all", "-o", str(tmp_path), "--train-memory", "lots"]) == 2
    assert main(["compile", "all", "-o", str(tmp_path), "--checkpoint-root", "/checkpoints"]) == 2
    err = capsys.readouterr().err
    assert "toleration 'gpu' is not KEY[=VALUE]:EFFECT" in err and "memory request 'lots'" in err
    assert "checkpoint_root on a cluster must be an s3:// location, got '/checkpoints'" in err


@pytest.fixture()
def kfp_server(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    for var in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    with FakeKfp(token="tok-1") as server:
        yield server


@pytest.mark.slow
def test_submit_sends_the_compiled_pipeline_and_parameters(kfp_server, capsys):
    code = main(["submit", "transfer", "--host", kfp_server.url, "--token", "tok-1", "--experiment", "nightly",
                 "-p", "target_labels_per_class=5", "-p", "strategy=l2sp:0.01", "--gpus", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = kfp_server.sent("POST", "/runs")
    run_id = next(iter(kfp_server.runs))
    assert f"submitted run {run_id}: {kfp_server.url}/#/runs/details/{run_id}" in out
    body = run["body"]
    assert body["runtime_config"]["parameters"] == {"target_labels_per_class": 5, "strategy": "l2sp:0.01"}
    pipeline_spec = body["pipeline_spec"]["pipeline_spec"]
    assert pipeline_spec["pipelineInfo"]["name"] == "tlpipe-transfer"
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "exec-adapt" in executors
    assert pipeline_spec["deploymentSpec"]["executors"]["exec-adapt"]["container"]["resources"]["accelerator"]["count"] == "2"
    (experiment,) = kfp_server.sent("POST", "/experiments")
    assert experiment["body"]["display_name"] == "nightly" and body["experiment_id"] in kfp_server.experiments
    assert all(r["authorization"] == "Bearer tok-1" for r in kfp_server.requests)

    # A second submission reuses the experiment; a compiled file submits as it is.
    assert main(["submit", str(REPO / "pipelines/compiled/retrain.yaml"), "--host", kfp_server.url, "--token", "tok-1",
                 "--experiment", "nightly"]) == 0
    assert len(kfp_server.sent("POST", "/experiments")) == 1
    second = kfp_server.sent("POST", "/runs")[1]["body"]
    committed = yaml.safe_load_all((REPO / "pipelines/compiled/retrain.yaml").read_text())
    assert second["pipeline_spec"]["pipeline_spec"] == next(committed)


@pytest.mark.parametrize("states, code, said", [
    (["PENDING", "RUNNING", "SUCCEEDED"], 0, "SUCCEEDED: "),
    (["RUNNING", "FAILED"], 2, "ended FAILED: pretrain: OOMKilled; its steps' logs are at "),
    (["RUNNING", "CANCELED"], 2, "ended CANCELED; its steps' logs are at "),  # kfp's own wait would not end here
])
def test_submit_wait_follows_the_run_to_its_end(kfp_server, capsys, monkeypatch, states, code, said):
    from tlpipe import remote

    monkeypatch.setattr(remote, "WAIT_POLL_SECONDS", 0.01)
    kfp_server.states, kfp_server.run_error = list(states), "pretrain: OOMKilled."
    compiled_file = str(REPO / "pipelines/compiled/retrain.yaml")
    assert main(["submit", compiled_file, "--host", kfp_server.url, "--token", "tok-1", "--wait"]) == code
    out, err = capsys.readouterr()
    run_id = next(iter(kfp_server.runs))
    assert [line.split(": ")[1] for line in out.splitlines() if line.startswith(f"run {run_id}: ")] == list(
        dict.fromkeys(states))
    assert f"{said}{kfp_server.url}/#/runs/details/{run_id}" in (out if code == 0 else err)


@pytest.mark.slow
def test_submit_errors_are_one_sentence(kfp_server, capsys, tmp_path):
    assert main(["submit", "transfer", "--host", kfp_server.url, "--token", "wrong"]) == 2
    assert "refused the credentials (HTTP 401)" in capsys.readouterr().err
    assert main(["submit", "transfer", "--host", "http://127.0.0.1:9", "--token", "tok-1"]) == 2
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["submit", "transfer", "--host", "not a url"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
    assert main(["submit", "transfer", "--host", kfp_server.url, "--token", "tok-1", "-p", "epochs=3"]) == 2
    assert "has no parameter 'epochs'" in capsys.readouterr().err
    kfp_server.fail[("POST", "/apis/v2beta1/runs")] = (500, "database is down")
    assert main(["submit", "transfer", "--host", kfp_server.url, "--token", "tok-1"]) == 2
    err = capsys.readouterr().err
    assert "refused to create the run: HTTP 500 database is down." in err and "Traceback" not in err
    assert main(["submit", str(tmp_path / "nope.yaml"), "--host", kfp_server.url, "--token", "tok-1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not kfp_server.runs


@pytest.mark.slow
def test_submit_and_schedule_check_before_anything_reaches_the_cluster(kfp_server, capsys, monkeypatch, tmp_path,
                                                                      request):
    from tlpipe import storage

    request.addfinalizer(storage.client.cache_clear)  # the S3 client below is made for a dead endpoint
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    connect = ["--host", kfp_server.url, "--token", "tok-1"]
    assert main(["submit", "transfer", *connect, "-p", "strategy=freeze:two"]) == 2
    assert "unknown fine-tuning strategy 'freeze:two'" in capsys.readouterr().err
    assert main(["schedule", "retrain", "--cron", "0 0 3 * * *", *connect, "-p", "select_by=test"]) == 2
    assert "unknown select_by 'test'" in capsys.readouterr().err
    # A checkpoint on the pod's own disk would be lost to the retry that needs it.
    assert main(["submit", "transfer", *connect, "-p", "checkpoint_root=/tmp/checkpoints"]) == 2
    assert "checkpoint_root on a cluster must be an s3:// location, got '/tmp/checkpoints'" in capsys.readouterr().err
    assert not kfp_server.runs and not kfp_server.recurring_runs

    # What the pods read is not checked from here without the means to, and the output says so.
    assert main(["submit", "transfer", *connect, "-p", "source=imagefolder:/data/source",
                 "-p", "target=imagefolder:s3://photos/target"]) == 0
    out = capsys.readouterr().out
    assert "not checked here: source /data/source (a path the pods read)" in out
    assert "not checked here: target s3://photos/target (no S3 credentials here)" in out
    assert "not checked here: checkpoint_root s3://tlpipe/checkpoints (no S3 credentials here)" in out
    assert len(kfp_server.runs) == 1

    # With credentials, S3 is checked before submitting: here the endpoint is down.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert main(["submit", "transfer", *connect, "-p", "publish_to=s3://published/runs"]) == 2
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in capsys.readouterr().err
    assert len(kfp_server.runs) == 1


@pytest.mark.slow
def test_schedule_create_list_delete(kfp_server, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-1")
    assert main(["schedule", "retrain", "--cron", "0 0 3 * * *", "--experiment", "retraining",
                 "-p", "adapt_epochs=40"]) == 0
    (created,) = kfp_server.sent("POST", "/recurringruns")
    body = created["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["display_name"] == "tlpipe-retrain"
    assert body["runtime_config"]["parameters"] == {"adapt_epochs": 40}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "tlpipe-retrain"
    assert kfp_server.experiments[body["experiment_id"]]["display_name"] == "retraining"
    recurring_id = next(iter(kfp_server.recurring_runs))
    assert f"scheduled recurring run {recurring_id}" in capsys.readouterr().out

    # The same name again is refused, or replaced with --replace (the chart's Job relies on it).
    assert main(["schedule", "retrain", "--cron", "0 0 4 * * *"]) == 2
    assert "a recurring run named 'tlpipe-retrain' exists" in capsys.readouterr().err
    assert main(["schedule", "retrain", "--cron", "0 30 4 * * 1-5", "--replace", "--catchup",
                 "--max-concurrency", "2"]) == 0
    assert len(kfp_server.recurring_runs) == 1 and recurring_id not in kfp_server.recurring_runs
    latest = kfp_server.sent("POST", "/recurringruns")[-1]["body"]
    assert latest["no_catchup"] is False and int(latest["max_concurrency"]) == 2
    capsys.readouterr()

    assert main(["schedule", "list"]) == 0
    (new_id,) = kfp_server.recurring_runs
    listing = capsys.readouterr().out
    assert new_id in listing and "0 30 4 * * 1-5" in listing and "tlpipe-retrain" in listing
    assert main(["schedule", "delete", new_id]) == 0
    assert not kfp_server.recurring_runs
    assert main(["schedule", "delete", new_id]) == 2
    assert "refused to delete recurring run" in capsys.readouterr().err


@pytest.mark.parametrize("cron, message", [
    ("0 3 * * *", "has 5 fields; Kubeflow Pipelines cron has 6, seconds first (a five-field Unix cron"),
    ("0 0 25 * * *", "'25' is not a valid hour (0-23)"),
    ("0 0 3 * * MON-XYZ", "'XYZ' is not a valid day of week"),
    ("0 */0 * * * *", "step '/0' in the minute field"),
])
def test_schedule_rejects_bad_cron_before_calling_the_server(kfp_server, capsys, cron, message):
    assert main(["schedule", "retrain", "--host", kfp_server.url, "--token", "tok-1", "--cron", cron]) == 2
    assert message in capsys.readouterr().err
    assert not kfp_server.requests


def test_valid_crons_pass():
    from tlpipe.remote import validate_cron

    for cron in ("0 0 3 * * *", "0 0 9 ? * 2-6", "*/30 * * * * *", "0 0 0 1 JAN,JUL ?", "0 15 10 * * SUN"):
        assert validate_cron(cron) == cron
