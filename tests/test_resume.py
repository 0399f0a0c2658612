"""A training step killed with SIGKILL and started again resumes from its checkpoint and ends with
exactly the weights of a run that was never interrupted (CPU, same seed): on local disk, and on S3
(the local stack) from a new process with a new, empty HOME and working directory, as a retried
step on a new pod does."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from tlpipe import storage
from tlpipe.models import load_model
from tlpipe.steps.common import SPLITS
from tlpipe.steps.ingest import ingest
from tlpipe.steps.pretrain import pretrain

STEP = """
import sys
from tlpipe.steps.adapt import adapt
from tlpipe.steps.pretrain import pretrain
from tlpipe.train import TrainConfig

step, data, out, run, epochs, checkpoint_root, minutes = sys.argv[1:8]
config = TrainConfig(epochs=int(epochs), batch_size=64, lr=0.01, seed=3, checkpoint_dir=checkpoint_root,
                     checkpoint_minutes=float(minutes))
if step == "pretrain":
    pretrain(f"{data}/source_train", out, "small-cnn", "", config, "resume", run)
else:
    adapt(f"{data}/source_model", f"{data}/source_train", f"{data}/target_unlabelled", out, "dann", config,
          "resume", run)
"""

pytestmark = pytest.mark.slow  # steps killed and resumed in subprocesses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    home = root / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPIPE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    names = SPLITS
    ingest("digits", "digits-m", 5, 0, 32, {n: str(root / n) for n in names}, "resume", "setup")
    from tlpipe.train import TrainConfig

    pretrain(str(root / "source_train"), str(root / "source_model"), "small-cnn", "", TrainConfig(epochs=1),
                   "resume", "setup")
    yield root, home
    mp.undo()


def start(step, data, out, run, epochs, home, checkpoint_root="", cwd=None, streamed=False, minutes=0.0):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"TLPIPE_HOME": str(home)}
    if streamed:  # DataLoader workers decode from the shards instead of the device holding the images
        env["TLPIPE_RESIDENT_MB"] = "0"
    return subprocess.Popen([sys.executable, "-c", STEP, step, str(data), str(out), run, str(epochs), checkpoint_root,
                             str(minutes)],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(process, ready, poll: float, what: str) -> None:
    """SIGKILLs the step as soon as ready() holds; fails the test if the step ends first or takes 2 minutes."""
    deadline = time.time() + 120
    while not ready():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"the step ended or took too long before {what}: {process.communicate()[0][-3000:]}")
        time.sleep(poll)
    process.send_signal(signal.SIGKILL)
    process.wait(30)


class LocalCheckpoint:
    poll = 0.05

    def __init__(self, home, run, step):
        self.path = home / "checkpoints" / run / step / "checkpoint.pt"

    def exists(self) -> bool:
        return self.path.exists()

    def epoch(self) -> int:
        return torch.load(self.path, weights_only=True)["epoch"]


class S3Checkpoint:
    poll = 0.5  # listing much faster than this makes SeaweedFS fail the step's PUT (InternalError)

    def __init__(self, root, run, step):
        self.folder = f"{root}/{run}/{step}"

    def exists(self) -> bool:
        return "checkpoint.pt" in storage.list_keys(self.folder)

    def epoch(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            return torch.load(storage.download(f"{self.folder}/checkpoint.pt", f"{tmp}/c.pt"), weights_only=True)["epoch"]


_uninterrupted: dict[tuple, str] = {}


def uninterrupted(step, epochs, streamed, root, home) -> str:
    """The model folder of the step run once without interruption: the weights a resumed run must end
    with (where its checkpoints go does not change them, so the local and S3 cases share one)."""
    key = (step, epochs, streamed)
    if key not in _uninterrupted:
        out = root / f"{step}-{epochs}-{'streamed' if streamed else 'resident'}-whole"
        whole = start(step, root, out, f"run-whole-{len(_uninterrupted)}", epochs, home, streamed=streamed)
        assert whole.wait(300) == 0, whole.stdout.read()
        _uninterrupted[key] = out
    return _uninterrupted[key]


@pytest.mark.parametrize("step, epochs, where", [
    ("pretrain", 4, "local"), ("adapt", 3, "local"), ("adapt", 3, "streamed"),
    pytest.param("pretrain", 4, "s3", marks=pytest.mark.stack)])
def test_a_killed_step_resumes_to_the_same_weights(data, step, epochs, where, request, tmp_path):
    """"streamed": the loaders read through DataLoader workers; adaptation's two loaders are mid-epoch
    (of their own epochs) at every checkpoint."""
    root, home = data
    streamed = where == "streamed"
    whole = uninterrupted(step, epochs, streamed, root, home)

    if where == "s3":
        request.getfixturevalue("stack")
        checkpoint_root = "s3://tlpipe/tests/resume"
        checkpoint = S3Checkpoint(checkpoint_root, f"run-killed-{where}", step)
        homes = [tmp_path / "pod-1", tmp_path / "pod-2"]  # each attempt: a new pod, nothing on its disk
    else:
        checkpoint_root, checkpoint = "", LocalCheckpoint(home, f"run-killed-{where}", step)
        homes = [home, home]
    for h in homes:
        h.mkdir(parents=True, exist_ok=True)
    out = root / f"{step}-{where}-killed"
    killed = start(step, root, out, f"run-killed-{where}", epochs, homes[0], checkpoint_root, cwd=homes[0],
                   streamed=streamed)
    kill_when(killed, checkpoint.exists, checkpoint.poll, "its first checkpoint")
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    saved_epoch = checkpoint.epoch()
    assert 1 <= saved_epoch < epochs
    if where == "s3":
        assert not any(homes[1].iterdir())

    again = start(step, root, out, f"run-killed-{where}", epochs, homes[1], checkpoint_root, cwd=homes[1],
                  streamed=streamed)
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert f"resuming from the checkpoint after epoch {saved_epoch}/{epochs}" in output
    assert not checkpoint.exists()  # removed once the model was written

    resumed, _ = load_model(out)
    reference, _ = load_model(whole)
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_step_killed_mid_epoch_resumes_at_the_step_it_saved(data):
    """With checkpoint_minutes small, the streamed adapt step also checkpoints within its epochs; killed
    after such a checkpoint, it resumes at the saved step of that epoch, with its loaders' remaining
    order, and ends with the weights of the run that was never interrupted."""
    root, home = data
    epochs = 3
    whole = start("adapt", root, root / "adapt-mid-whole", "run-mid-whole", epochs, home, streamed=True)
    assert whole.wait(300) == 0, whole.stdout.read()

    out, checkpoint = root / "adapt-mid-killed", LocalCheckpoint(home, "run-mid", "adapt")
    killed = start("adapt", root, out, "run-mid", epochs, home, streamed=True, minutes=0.002)  # ~every 120 ms
    kill_when(killed, lambda: checkpoint.exists() and torch.load(checkpoint.path, weights_only=True)["progress"]["step"],
              checkpoint.poll, "a mid-epoch checkpoint")
    saved = torch.load(checkpoint.path, weights_only=True)
    within = f", step {saved['progress']['step']}/" if saved["progress"]["step"] else ""

    again = start("adapt", root, out, "run-mid", epochs, home, streamed=True, minutes=0.002)  # a retry: same parameters
    output = again.communicate(timeout=300)[0]
    assert again.returncode == 0, output
    assert f"resuming from the checkpoint after epoch {saved['epoch']}/{epochs}{within}" in output
    resumed, _ = load_model(out)
    reference, _ = load_model(root / "adapt-mid-whole")
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
