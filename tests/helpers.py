"""What several test modules share: small data sets, a trained source model, the command line in a
subprocess, a free port, a populated Hugging Face cache. Fixtures live in conftest.py."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from tlpipe.data import ImageSet
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.train import TrainConfig


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


def colour_set(n_per_class=16, seed=0, shift=0):
    """Three classes told apart by which colour channel is bright; `shift` brightens everything."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        x = rng.integers(0, 60, (n_per_class, 32, 32, 3)).astype(np.int64) + shift
        x[..., label] += 150
        images.append(np.clip(x, 0, 255).astype(np.uint8))
        labels += [label] * n_per_class
    return ImageSet(np.concatenate(images), np.array(labels), ["r", "g", "b"])


def trained_source():
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32))
    pretrain(model, colour_set(), TrainConfig(epochs=3, batch_size=16))
    return model


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, dict]) -> None:
    """Lays files out as huggingface_hub keeps a downloaded repository: refs/main names a snapshot."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, state in files.items():
        if name.endswith(".safetensors"):
            save_file(state, str(snapshot / name))
        else:
            torch.save(state, snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
