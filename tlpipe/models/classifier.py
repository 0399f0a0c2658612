"""The classifier every step trains: preprocessing, backbone blocks and a linear head.

It takes uint8 images (N, H, W, 3) of any size and does its own resizing and normalisation, so
training, evaluation and the registered MLflow model all see images through the same code.
"""

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.models.backbones import build_backbone


@dataclass
class ModelSpec:
    backbone: str
    classes: list[str]
    input_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Preprocess(nn.Module):
    """uint8 NHWC of any size -> normalised float NCHW at the model's input size."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A permuted NHWC tensor is already channels_last in memory, which convolutions prefer.
        x = images.permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    def __init__(self, spec: ModelSpec, weights: dict | None = None, weights_source: str = ""):
        super().__init__()
        backbone = build_backbone(spec.backbone, spec.input_size, weights, weights_source)
        spec.mean, spec.std = spec.mean or list(backbone.mean), spec.std or list(backbone.std)
        self.spec = spec
        self.preprocess = Preprocess(spec.input_size, spec.mean, spec.std)
        self.blocks = backbone.blocks
        self.head = nn.Linear(backbone.feature_dim, len(spec.classes))
        self.feature_dim = backbone.feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@torch.inference_mode()
def predict(model: Classifier, images, batch_size: int = 512) -> torch.Tensor:
    """Class ids for uint8 images (numpy or tensor, N x H x W x 3), in evaluation mode."""
    model.eval()
    device = next(model.parameters()).device
    images = torch.as_tensor(images)
    out = [model(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
