import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlpipe import storage

torch.set_num_threads(2)
# benchmarks/photos.py writes the synthetic photo folders that the photo-folder tests ingest.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture
def tlpipe_home(tmp_path, monkeypatch):
    """An empty embedded default (MLflow on SQLite, pipeline root) for one test."""
    home = tmp_path / "tlpipe-home"
    monkeypatch.setenv("TLPIPE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def write_image_folder(root, classes=("a", "b", "c"), per_class=8, size=16, seed=0, mode="RGB"):
    """A small image folder whose classes differ in colour, so that a model can learn them."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., label % 3] += 180
            Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root


def tlpipe(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    return subprocess.run([sys.executable, "-m", "tlpipe.cli", *args], env={**base, "TLPIPE_HOME": str(home), **(env or {})},
                          capture_output=True, text=True, timeout=900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack (SeaweedFS S3 + MLflow server) on free loopback ports, started by tlpipe's own
    command, its variables exported for the module's tests, stopped (and the variables restored) after."""
    home = tmp_path_factory.mktemp("stack") / "home"
    saved = dict(os.environ)
    try:
        started = tlpipe(home, "stack", "up")
        assert started.returncode == 0, started.stderr[-3000:]
        lines = tlpipe(home, "stack", "env").stdout.splitlines()
        env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        os.environ.update(env)
        storage.client.cache_clear()
        yield home, env
    finally:
        os.environ.clear()
        os.environ.update(saved)
        storage.client.cache_clear()
        tlpipe(home, "stack", "down")
