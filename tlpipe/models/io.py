"""Model artifacts: a directory of model.safetensors + model.json (pretrained weights: tlpipe.models.weights)."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tlpipe.errors import TlpipeError
from tlpipe.models.classifier import Classifier, ModelSpec

FORMAT = "tlpipe.model/1"


def save_model(directory: str | Path, model: Classifier, **facts) -> dict:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    meta = {"format": FORMAT, "spec": model.spec.to_dict(), **facts}
    (directory / "model.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise TlpipeError(f"{directory} is not a tlpipe model artifact (model.json and model.safetensors expected).")
    meta = json.loads(meta_path.read_text())
    model = Classifier(ModelSpec(**meta["spec"]))
    model.load_state_dict(load_file(str(weights_path)))
    return model.to(device), meta
