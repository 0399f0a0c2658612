"""Model artifacts (a directory: model.safetensors + model.json) and pretrained weight files.

Nothing here unpickles: weights are safetensors, and `torch.load` runs with weights_only=True.
"""

import json
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from tlpipe import storage
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


WEIGHTS_ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Z0-9_]+$")


def torch_cache_file(enum_name: str) -> Path:
    """Where torch.hub keeps the file of a torchvision weights enum (e.g. ResNet50_Weights.IMAGENET1K_V2):
    $TORCH_HOME/hub/checkpoints/<the file name of its download URL>. Nothing is downloaded."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(enum_name)
    except (ValueError, KeyError, AttributeError):
        raise TlpipeError(f"'{enum_name}' is not a torchvision weights enum (e.g. ResNet18_Weights.IMAGENET1K_V1).") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def read_weights(location: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or PyTorch weights file (local or s3://), refusing pickled code,
    or from the torch cache's file for a torchvision weights enum name."""
    if WEIGHTS_ENUM.match(str(location)):
        path = torch_cache_file(str(location))
        if not path.is_file():
            raise TlpipeError(
                f"{location} is not in the torch cache ({path}); tlpipe never downloads at run time: fetch it "
                "where there is network access (torchvision.models.get_weight(name).get_state_dict()) and copy "
                "it there, or pass the file itself."
            )
        return read_weights(path)
    if storage.is_s3(str(location)):
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.download(str(location), Path(tmp) / Path(str(location)).name)
            return read_weights(local)
    path = Path(location)
    if not path.is_file():
        raise TlpipeError(f"pretrained weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise TlpipeError(f"pretrained weights {path} are not a valid safetensors file ({error}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TlpipeError(
            f"pretrained weights {path} cannot be loaded as plain tensors (refused: files that run code on load "
            f"are not accepted; {type(error).__name__})."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TlpipeError(f"pretrained weights {path} do not hold a state dict of tensors.")
    return state
