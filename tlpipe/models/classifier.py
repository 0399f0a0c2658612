"""The classifier every step trains: preprocessing, backbone blocks and a head.

It takes uint8 images (N, H, W, 3) of any size and does its own resizing and normalisation, so
training, evaluation and the registered MLflow model all see images through the same code. Every
variant returns one score per class, so evaluation, serving and the registry treat them alike:
- head "linear": a linear layer over the features (the usual classifier);
- head "attributes": zero-shot by attributes: predicts each attribute, and scores a class by how
  likely its attribute signature is (direct attribute prediction), so unseen classes get scores too;
- head "embedding": zero-shot by a shared space: images f(x) and class signatures g(a) are embedded
  in one space and a class scores f(x) . g(a);
- tasks: extra linear heads of a multi-task model, one per other task (the head is the target's);
- progressive=True: a progressive network: the source blocks as a frozen first column, and a new
  column that takes lateral inputs (through adapters) from the first column at every level.
"""

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.models.backbones import build_backbone


@dataclass
class ModelSpec:
    backbone: str
    classes: list[str]
    input_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    head: str = "linear"  # linear, attributes or embedding
    attributes: list[list[float]] = field(default_factory=list)  # per class, for the zero-shot heads
    progressive: bool = False
    tasks: list[str] = field(default_factory=list)  # extra linear heads of multi-task models (same classes)
    bottleneck: int = 0  # width of a linear + batch-norm + ReLU layer between backbone and head (0: none)

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


class AttributeHead(nn.Module):
    """Attribute logits from features; a class scores sum_a log p(a = its signature's value)."""

    def __init__(self, feature_dim: int, signatures: torch.Tensor):
        super().__init__()
        self.register_buffer("signatures", signatures)
        self.attributes = nn.Linear(feature_dim, signatures.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.attributes(features).float()
        s = self.signatures
        return F.logsigmoid(z) @ s.T + F.logsigmoid(-z) @ (1 - s).T


class EmbeddingHead(nn.Module):
    """f(x) . g(a): images and class attribute signatures in one space."""

    def __init__(self, feature_dim: int, signatures: torch.Tensor, dim: int = 64):
        super().__init__()
        self.register_buffer("signatures", signatures)
        self.image = nn.Linear(feature_dim, dim)
        self.label = nn.Linear(signatures.shape[1], dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.image(features).float() @ self.label(self.signatures).T


def _head(spec: ModelSpec, feature_dim: int) -> nn.Module:
    if spec.head == "linear":
        return nn.Linear(feature_dim, len(spec.classes))
    signatures = torch.tensor(spec.attributes, dtype=torch.float32)
    if signatures.shape[0] != len(spec.classes):
        raise ValueError(f"{signatures.shape[0]} attribute signatures for {len(spec.classes)} classes")
    return {"attributes": AttributeHead, "embedding": EmbeddingHead}[spec.head](feature_dim, signatures)


def _adapter(lateral: torch.Tensor) -> nn.Module:
    """A zero-initialised map from a first-column output to the new column's input at that level:
    the new column starts as if the laterals were not there and learns how much to use them."""
    channels = lateral.shape[1]
    layer = nn.Conv2d(channels, channels, 1) if lateral.dim() == 4 else nn.Linear(channels, channels)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Classifier(nn.Module):
    def __init__(self, spec: ModelSpec, weights: dict | None = None, weights_source: str = ""):
        super().__init__()
        backbone = build_backbone(spec.backbone, spec.input_size, weights, weights_source)
        spec.mean, spec.std = spec.mean or list(backbone.mean), spec.std or list(backbone.std)
        self.spec = spec
        self.preprocess = Preprocess(spec.input_size, spec.mean, spec.std)
        self.blocks = backbone.blocks
        self.trunk = backbone.trunk  # a timm model runs its own forward
        self.feature_dim = spec.bottleneck or backbone.feature_dim  # what the head and the alignment losses see
        self.bottleneck = (nn.Sequential(nn.Linear(backbone.feature_dim, spec.bottleneck), nn.BatchNorm1d(spec.bottleneck),
                                         nn.ReLU(inplace=True)) if spec.bottleneck else None)
        self.head = _head(spec, self.feature_dim)
        self.tasks = nn.ModuleDict({task: nn.Linear(self.feature_dim, len(spec.classes)) for task in spec.tasks})
        self.column1, self.adapters = None, None
        if spec.progressive:
            if self.trunk is not None:
                raise TlpipeError(f"progressive networks need a backbone of sequential blocks; {spec.backbone} is not one "
                                  "(use small-cnn or a torchvision backbone).")
            self.column1 = build_backbone(spec.backbone, spec.input_size).blocks.requires_grad_(False).eval()
            with torch.no_grad():
                laterals = self._column1(torch.zeros(2, spec.input_size, spec.input_size, 3, dtype=torch.uint8))
            self.adapters = nn.ModuleList(_adapter(h) for h in laterals)

    def _column1(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, outputs = self.preprocess(images), []
        for block in self.column1:
            h = block(h)
            outputs.append(h)
        return outputs

    def train(self, mode: bool = True):
        super().train(mode)
        if self.column1 is not None:
            self.column1.eval()  # the first column never changes, batch-norm statistics included
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self._backbone_features(images)
        return x if self.bottleneck is None else self.bottleneck(x)

    def _backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.trunk is not None:
            return self.trunk(x)
        if self.column1 is None:
            for block in self.blocks:
                x = block(x)
            return x
        with torch.no_grad():
            laterals = self._column1(images)
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else x + self.adapters[i - 1](laterals[i - 1]))
        return x + self.adapters[-1](laterals[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters above the backbone's blocks: the head, and the bottleneck an adapted model has."""
        in_blocks = {id(p) for p in self.blocks.parameters()}
        return [p for p in self.parameters() if id(p) not in in_blocks]
