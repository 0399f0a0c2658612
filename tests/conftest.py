import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


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
