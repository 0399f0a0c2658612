"""A training step killed with SIGKILL and started again resumes from its checkpoint and ends with
exactly the weights of a run that was never interrupted (CPU, same seed)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tlpipe import steps
from tlpipe.models import load_model

STEP = """
import sys
from tlpipe import steps
from tlpipe.train import TrainConfig
step, data, out, run, epochs = sys.argv[1:6]
config = TrainConfig(epochs=int(epochs), batch_size=64, lr=0.01, seed=3)
if step == "pretrain":
    steps.pretrain(f"{data}/source_train", out, "small-cnn", "", config, "resume", run)
else:
    steps.adapt(f"{data}/source_model", f"{data}/source_train", f"{data}/target_unlabelled", out, "dann", config,
                "resume", run)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    home = root / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPIPE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    names = steps.SPLITS
    steps.ingest("digits", "digits-m", 5, 0, 32, {n: str(root / n) for n in names}, "resume", "setup")
    from tlpipe.train import TrainConfig

    steps.pretrain(str(root / "source_train"), str(root / "source_model"), "small-cnn", "", TrainConfig(epochs=1),
                   "resume", "setup")
    yield root, home
    mp.undo()


def start(step, data, out, run, epochs, home):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"TLPIPE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", STEP, step, str(data), str(out), run, str(epochs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("step, epochs", [("pretrain", 8), ("adapt", 5)])
def test_a_killed_step_resumes_to_the_same_weights(data, step, epochs):
    root, home = data
    whole = start(step, root, root / f"{step}-whole", "run-whole", epochs, home)
    assert whole.wait(300) == 0, whole.stdout.read()

    checkpoint = home / "checkpoints" / "run-killed" / step / "checkpoint.pt"
    killed = start(step, root, root / f"{step}-killed", "run-killed", epochs, home)
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert killed.poll() is None and time.time() < deadline, "the step ended before its first checkpoint"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    assert not (root / f"{step}-killed" / "model.safetensors").exists()
    saved_epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= saved_epoch < epochs

    again = start(step, root, root / f"{step}-killed", "run-killed", epochs, home)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert f"resuming from the checkpoint after epoch {saved_epoch}/{epochs}" in output
    assert not checkpoint.exists()  # removed once the model was written

    resumed, _ = load_model(root / f"{step}-killed")
    reference, _ = load_model(root / f"{step}-whole")
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_half_written_checkpoint_is_never_taken_for_a_whole_one(tmp_path):
    from tlpipe.checkpoint import Checkpoint

    model = torch.nn.Linear(2, 2)
    Checkpoint(str(tmp_path), {"model": model}).save(3)
    (tmp_path / "checkpoint.partial").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    fresh = torch.nn.Linear(2, 2)
    assert Checkpoint(str(tmp_path), {"model": fresh}).restore() == 3
    assert torch.equal(fresh.weight, model.weight)
