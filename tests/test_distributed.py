"""Data-parallel training (DDP) on CPU with the gloo backend: 2 processes against 1."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch

from tlpipe import distributed, tracking
from tlpipe.data import load_domain, save_dataset
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import score
from tlpipe.methods import adapt as adaptation
from tlpipe.methods.finetune import finetune
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, load_model
from tlpipe.steps.pretrain import pretrain as pretrain_step
from tlpipe.train import TrainConfig

pytestmark = pytest.mark.slow  # several training processes per test


@pytest.fixture(scope="module")
def digits():
    data = load_domain("digits", image_size=16, seed=0)
    return data.subset(np.arange(0, len(data), 2)), data.subset(np.arange(1, len(data), 2))


def source_model(train) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", train.classes, 16))
    pretrain(model, train, TrainConfig(epochs=2, batch_size=64, seed=0))
    return model


def test_linear_probe_on_two_processes_equals_one_process(digits):
    """With batch norm frozen, each rank's half-batch gradient averaged by DDP is the whole batch's:
    the heads agree to float rounding."""
    train, _ = digits
    source = source_model(train)
    config = TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=1)
    one = distributed.run(1, finetune, source, train, "linear-probe", config)
    two = distributed.run(2, finetune, source, train, "linear-probe", config)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    assert not torch.equal(one.head.weight, source.head.weight)  # it did train


def test_full_training_on_two_processes_matches_one_within_two_points(digits):
    """Batch norm normalises each rank's half batch by its own statistics (as DDP does without
    SyncBatchNorm, which gloo lacks), so the runs differ slightly: accuracy within 2 points. Each rank trains
    its own copy of the model, so batch norm counts the same steps as one process: the workers' model arrives
    through torch.multiprocessing in shared memory, and ranks updating one copy counted both ranks' steps
    (and made runs irreproducible; the two-node test below compares weights bit for bit)."""
    train, test = digits
    results, counted = {}, {}
    for nproc in (1, 2):
        torch.manual_seed(0)
        model = Classifier(ModelSpec("small-cnn", train.classes, 16)).train()
        final = distributed.run(nproc, pretrain, model, train, TrainConfig(epochs=6, batch_size=64, seed=0))
        results[nproc] = (score(model, test).accuracy, final)
        counted[nproc] = [int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counted[2] == counted[1], counted
    (acc1, _), (acc2, final2) = results[1], results[2]
    assert acc1 > 0.8 and abs(acc1 - acc2) <= 0.02, (acc1, acc2)
    assert final2["images_per_second"] > 0
    print(f"test accuracy: 1 process {acc1:.4f}, 2 processes {acc2:.4f}")


@pytest.mark.parametrize("method", ["dann", "adamatch"])
def test_adaptation_runs_on_two_processes(digits, method):
    """An alignment method (a discriminator in the data-parallel model) and self-training (FixMatch's loop,
    which AdaMatch extends). AdaMatch's source-only pass runs inside its one data-parallel forward, with the labelled target
    images as a third loader."""
    train, test = digits
    source = source_model(train)
    labelled = test.subset(np.arange(20)) if method == "adamatch" else None
    adapted = distributed.run(2, adaptation.adapt, method, source, train, test.without_labels(),
                              TrainConfig(epochs=1, batch_size=32, backbone_lr=1.0), labelled=labelled)
    assert not torch.equal(adapted.head.weight, source.head.weight)
    assert score(adapted, test).accuracy > 0.5


def test_only_rank_0_logs_and_writes(digits, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TLPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train, _ = digits
    save_dataset(tmp_path / "train", train, spec="digits")
    config = TrainConfig(epochs=4, batch_size=64, seed=0, nproc=2)
    pretrain_step(str(tmp_path / "train"), str(tmp_path / "model"), "small-cnn", "", config, "ddp", "run-1")
    out = capfd.readouterr().out
    assert out.count("[pretrain] epoch") == 4  # rank 1 prints nothing
    client = tracking.configure()
    [run] = client.search_runs([client.get_experiment_by_name("ddp").experiment_id],
                               filter_string="tags.`tlpipe.step` = 'pretrain'")
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]  # once per epoch, not once per rank
    assert client.get_metric_history(run.info.run_id, "train_images_per_second")
    model, meta = load_model(tmp_path / "model")
    assert meta["method"] == "source-only" and sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "mlflow_model.json", "model.json", "model.safetensors"]  # the model, and the LoggedModel it was logged as
    mlflow.set_tracking_uri(None)


def test_uneven_batch_split_and_bad_nproc_are_one_sentence(digits):
    train, _ = digits
    model = Classifier(ModelSpec("small-cnn", train.classes, 16))
    with pytest.raises(TlpipeError, match="nproc=-1 must be 0"):
        distributed.run(-1, pretrain, model, train, TrainConfig(epochs=1))
    assert distributed.processes(0) == 1  # no GPU here: one process
    with pytest.raises(TlpipeError, match="^batch size 63 does not split evenly over 2 processes.$"):
        distributed.run(2, pretrain, copy.deepcopy(model), train, TrainConfig(epochs=1, batch_size=63))


def test_a_multi_task_model_fine_tunes_on_two_processes(digits):
    """Fine-tuning a multi-task champion trains its target head only: its source head gets no gradient,
    which DDP must be told to expect."""
    train, _ = digits
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", train.classes, 16, tasks=["source"]))
    tuned = distributed.run(2, finetune, model, train, "full", TrainConfig(epochs=1, batch_size=64, seed=0))
    assert tuned.spec.tasks == ["source"]
    torch.testing.assert_close(tuned.tasks["source"].weight, model.tasks["source"].weight)  # untouched
    assert not torch.equal(tuned.head.weight, model.head.weight)


def _pretrain_parameters(tmp_path, train, val, **overrides) -> dict:
    """A pretrain component's parameters, as its launcher component puts them in a Trainer job's spec."""
    save_dataset(tmp_path / "source_train", train, spec="digits")
    save_dataset(tmp_path / "source_val", val, spec="digits")
    return {"backbone": "small-cnn", "pretrained_weights": "", "epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0,
            "checkpoint_root": str(tmp_path / "checkpoints"), "checkpoint_every": 1, "nproc": 1,
            "source_augment": "none", "experiment": "nodes", **overrides}


def _node(spec: dict, node_rank: int, nnodes: int, port: int, env: dict, log) -> subprocess.Popen:
    """One node's torchrun, as a Trainer job's pod starts it (here both nodes on localhost, gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
               "--rdzv-id", "nodes-test", "--max-restarts", "0", "-m", "tlpipe.launch", json.dumps(spec)]
    # Output to a file: a failing job's tracebacks can fill a pipe nobody reads until the end.
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(spec: dict, env: dict, kill_node_1_when=None) -> list[tuple[int, str]]:
    """Both nodes' exit status and output; with `kill_node_1_when`, node 1 is killed once it holds."""
    port = _free_port()
    with tempfile.TemporaryFile("w+") as log0, tempfile.TemporaryFile("w+") as log1:
        nodes = [_node(spec, rank, 2, port, env, log) for rank, log in ((0, log0), (1, log1))]
        if kill_node_1_when is not None:
            deadline = time.monotonic() + 120
            while not kill_node_1_when() and time.monotonic() < deadline:
                time.sleep(0.05)
            # A node dies whole: its agent and its workers (which torchrun may start in sessions of their own).
            agent = psutil.Process(nodes[1].pid)
            for process in [*agent.children(recursive=True), agent]:
                process.kill()
        try:
            codes = [node.wait(timeout=180) for node in nodes]
        except subprocess.TimeoutExpired:
            codes = [node.poll() if node.poll() is not None else "timed out" for node in nodes]
            for node in nodes:
                if node.poll() is None:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait()
        outputs = []
        for log in (log0, log1):
            log.seek(0)
            outputs.append(log.read())
        return list(zip(codes, outputs))


def test_two_nodes_under_torchrun_train_what_one_node_trains_and_resume_after_a_node_dies(digits, tmp_path, monkeypatch):
    """The multi-node path for real on CPU: torchrun on two "nodes" (two launchers, c10d rendezvous on
    localhost, gloo) runs the pretrain step through tlpipe.launch as a Trainer job's pods would. Global
    rank 0 alone tracks the step and writes the model, bit-identical to the step's own 2-process run on one
    node (the same global batch over the same world size). Then node 1 is killed after a mid-epoch
    checkpoint: the job fails and writes nothing, and a new job of the same pipeline run resumes from that
    checkpoint to the same weights again."""
    from safetensors.torch import load_file

    from tlpipe.launch import LocalArtifact
    from tlpipe.steps import training

    train, val = digits
    env = {**os.environ, "TLPIPE_HOME": str(tmp_path / "home"), "TLPIPE_PIPELINE_RUN": "run-nodes",
           "OMP_NUM_THREADS": "1", "TLPIPE_COLLECTIVE_TIMEOUT": "60"}  # node 0 gives up on a dead node 1 after 60 s
    env.pop("MLFLOW_TRACKING_URI", None)
    parameters = _pretrain_parameters(tmp_path, train, val)
    inputs = {"source_train": str(tmp_path / "source_train"), "source_val": str(tmp_path / "source_val")}

    def spec(name: str, **overrides) -> dict:
        return {"step": "pretrain", "parameters": {**parameters, **overrides}, "inputs": inputs,
                "output": str(tmp_path / name / "model"), "facts": str(tmp_path / name / "facts.json")}

    def weights(model_dir) -> dict:
        return load_file(Path(model_dir) / "model.safetensors")

    def assert_same(a: dict, b: dict) -> None:
        assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []

    ran = _two_nodes(spec("nodes"), env)
    assert [rc for rc, _ in ran] == [0, 0], ran
    assert json.loads((tmp_path / "nodes" / "facts.json").read_text())["method"] == "source-only"
    assert sum(output.count("[pretrain] epoch") for _, output in ran) == 3  # rank 0's lines only
    nodes = weights(tmp_path / "nodes" / "model")

    for key in ("TLPIPE_HOME", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-one-node")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_node = {**parameters, "nproc": 2, "model": LocalArtifact(str(tmp_path / "one-node"))}
    one_node.update({name: LocalArtifact(path) for name, path in inputs.items()})
    training.pretrain(one_node)
    assert_same(weights(tmp_path / "one-node"), nodes)
    assert score(load_model(tmp_path / "nodes" / "model")[0], val).accuracy > 0.8
    client = tracking.configure()
    runs = client.search_runs([client.get_experiment_by_name("nodes").experiment_id],
                              filter_string="tags.`tlpipe.step` = 'pretrain'")
    assert len(runs) == 2  # one step run per job, not one per rank
    mlflow.set_tracking_uri(None)

    # A mid-epoch checkpoint about every step; node 1 dies once the first is written.
    env["TLPIPE_PIPELINE_RUN"] = "run-killed"
    killed = spec("killed", checkpoint_minutes=0.0001)
    checkpoints = tmp_path / "checkpoints" / "run-killed" / "pretrain"
    ran = _two_nodes(killed, env, kill_node_1_when=lambda: checkpoints.exists() and any(checkpoints.iterdir()))
    assert ran[0][0] != 0 and not (tmp_path / "killed").exists(), ran[0][1][-2000:]
    ran = _two_nodes(killed, env)
    assert [rc for rc, _ in ran] == [0, 0], ran
    assert "resuming from the checkpoint" in ran[0][1] + ran[1][1], ran[0][1][-2000:]
    assert_same(weights(tmp_path / "killed" / "model"), nodes)
