"""Backbones as an ordered list of blocks, so that transfer methods can copy or freeze the first k.

Each builder takes optional pretrained weights in the backbone's published key names (torchvision's
for torchvision models, tlpipe's own `blocks.*` for the small CNN) and loads them before splitting.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from tlpipe.errors import TlpipeError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    blocks: nn.ModuleList
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_matching(module: nn.Module, state: dict, source: str, head_prefixes: tuple[str, ...]) -> None:
    """Loads `state` into `module`, ignoring head weights; any other mismatch is a user error."""
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(head_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise TlpipeError(f"pretrained weights {source} do not fit this backbone ({detail}); check the backbone parameter.")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise TlpipeError(
                f"pretrained weights {source} do not fit this backbone: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(own[key].shape)}."
            )
    module.load_state_dict(state, strict=False)


def small_cnn(input_size: int, weights: dict | None, source: str) -> Backbone:
    """The DANN paper's digit network (conv 32, conv 48, fc 100, fc 100), with batch norm."""
    convs = [
        nn.Sequential(nn.Conv2d(3, 32, 5), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 48, 5), nn.BatchNorm2d(48), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
    ]
    with torch.no_grad():
        flat = nn.Sequential(*convs)(torch.zeros(2, 3, input_size, input_size)).flatten(1).shape[1]
    blocks = nn.ModuleList(
        convs
        + [
            nn.Sequential(nn.Flatten(), nn.Linear(flat, 100), nn.BatchNorm1d(100), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Linear(100, 100), nn.BatchNorm1d(100), nn.ReLU(inplace=True)),
        ]
    )
    if weights is not None:
        wrapper = nn.Module()
        wrapper.blocks = blocks
        load_matching(wrapper, weights, source, ("head.", "preprocess."))
    return Backbone(blocks, 100, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _blocks(*groups) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(*group) if isinstance(group, (list, tuple)) else group for group in groups)


def resnet(depth: int):
    def build(input_size: int, weights: dict | None, source: str) -> Backbone:
        from torchvision import models

        net = getattr(models, f"resnet{depth}")(weights=None)
        if weights is not None:
            load_matching(net, weights, source, ("fc.",))
        blocks = nn.ModuleList(
            [
                nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)),
                net.layer1,
                net.layer2,
                net.layer3,
                nn.Sequential(OrderedDict(layer4=net.layer4, avgpool=net.avgpool, flatten=nn.Flatten())),
            ]
        )
        return Backbone(blocks, net.fc.in_features, IMAGENET_MEAN, IMAGENET_STD)

    return build


def mobilenet_v3(size: str):
    """Blocks at the feature map's stride steps; the pooled 1280/1024-d pre-classifier layer
    (pretrained) is part of the last block, the final linear layer is the head."""

    def build(input_size: int, weights: dict | None, source: str) -> Backbone:
        from torchvision import models

        net = getattr(models, f"mobilenet_v3_{size}")(weights=None)
        if weights is not None:
            load_matching(net, weights, source, ("classifier.3.",))
        f = net.features
        cuts = {"large": (2, 4, 7, 13), "small": (1, 2, 4, 9)}[size]
        edges = (0, *cuts, len(f))
        stages = [list(f[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        stages[-1] += [net.avgpool, nn.Flatten(), *net.classifier[:3]]
        return Backbone(_blocks(*stages), net.classifier[3].in_features, IMAGENET_MEAN, IMAGENET_STD)

    return build


def efficientnet_b0(input_size: int, weights: dict | None, source: str) -> Backbone:
    from torchvision import models

    net = models.efficientnet_b0(weights=None)
    if weights is not None:
        load_matching(net, weights, source, ("classifier.",))
    f = net.features  # stem, seven MBConv stages, the 1x1 head convolution
    blocks = _blocks(f[0:2], f[2], f[3], f[4], f[5], f[6], [*f[7:], net.avgpool, nn.Flatten()])
    return Backbone(blocks, net.classifier[1].in_features, IMAGENET_MEAN, IMAGENET_STD)


BACKBONES = {
    "small-cnn": small_cnn,
    "resnet18": resnet(18),
    "resnet50": resnet(50),
    "mobilenet_v3_large": mobilenet_v3("large"),
    "mobilenet_v3_small": mobilenet_v3("small"),
    "efficientnet_b0": efficientnet_b0,
}


def build_backbone(name: str, input_size: int, weights: dict | None = None, source: str = "") -> Backbone:
    if name not in BACKBONES:
        raise TlpipeError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name](input_size, weights, source)
