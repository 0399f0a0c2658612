"""Backbones as an ordered list of blocks, so that transfer methods can copy or freeze the first k.

Each builder takes optional pretrained weights in the backbone's published key names (torchvision's
for torchvision models, timm's for `timm:<name>`, tlpipe's own `blocks.*` for the small CNN) and
loads them before splitting. The small CNN and the torchvision networks are split into sequential
blocks that the classifier runs one after another; a timm model keeps its own forward (`trunk`) and
its blocks are timm's coarse layer groups (stem, stages, final norm), used for freezing and copying.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from tlpipe.errors import TlpipeError, did_you_mean

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    blocks: "nn.ModuleList | Blocks"
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    trunk: nn.Module | None = None  # a timm model: images -> pooled features; its blocks are views of it


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


class Block:
    """One of a timm model's layer groups: its parameters and buffers, and the modules that own them.
    Offers what transfer methods use of a block (parameters, state, train/eval, requires_grad_)."""

    def __init__(self, model: nn.Module, names: list[str]):
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        owners = {n.rpartition(".")[0] for n in names} - {""}  # "": the model itself (e.g. a ViT's class token)
        self.modules = [model.get_submodule(owner) for owner in sorted(owners)]
        self._tensors = {n: tensors[n] for n in names}

    def named_parameters(self):
        return ((n, t) for n, t in self._tensors.items() if isinstance(t, nn.Parameter))

    def parameters(self):
        return (t for _, t in self.named_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._tensors)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in self._tensors.items():
                tensor.copy_(state[name])

    def eval(self):
        for module in self.modules:
            module.training = False  # only the owning modules: their batch-norm statistics stay fixed
        return self

    def requires_grad_(self, flag: bool = True):
        for parameter in self.parameters():
            parameter.requires_grad_(flag)
        return self


class Blocks(list):
    """A timm model's blocks, in order; not registered as modules (the trunk owns the weights)."""

    def named_parameters(self):
        return ((n, p) for block in self for n, p in block.named_parameters())

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t for block in self for n, t in block.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for block in self:
            block.load_state_dict(state)


def _tagged(name: str, source: str) -> str:
    """The timm name whose pretrained config (mean, std, ...) goes with weights from `source`: the
    weights' own tag (timm:<model>.<tag>, or a timm repository on the Hub, hf-hub:timm/<model>.<tag>),
    else `name` with its default tag. A CLIP- or augreg-trained tag normalises otherwise than the default."""
    for prefix in ("timm:", "hf-hub:timm/"):
        if source.startswith(f"{prefix}{name}."):
            return source.removeprefix(prefix).partition("@")[0]
    return name


def timm_model(name: str):
    """Any timm model, headless (num_classes=0: it returns pooled features), with timm's own loading of
    pretrained weights (its filters convert and resample them, e.g. a ViT's position embeddings)."""

    def build(input_size: int, weights: dict | None, source: str) -> Backbone:
        import timm
        from timm.models import group_parameters

        options = {"pretrained_cfg_overlay": {"state_dict": weights}} if weights is not None else {}
        try:
            model = timm.create_model(_tagged(name, source), pretrained=weights is not None, num_classes=0, **options)
        except (RuntimeError, KeyError, ValueError, AssertionError) as error:  # timm's filters and strict loading
            raise TlpipeError(f"pretrained weights {source} do not fit timm:{name} ({str(error).splitlines()[0]}).") from None
        if hasattr(model, "set_input_size"):  # patch models: position embeddings resampled to the image size
            model.set_input_size(img_size=(input_size, input_size))
        try:
            with torch.no_grad():
                feature_dim = model.eval()(torch.zeros(1, 3, input_size, input_size)).shape[1]
        except (RuntimeError, AssertionError) as error:
            raise TlpipeError(f"timm:{name} does not take {input_size} px images ({error}); set image_size to one it does.") from None
        model.train()
        group_of = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
        for buffer, _ in model.named_buffers():  # batch-norm statistics go with their module's weights
            owner = buffer.rpartition(".")[0] + "."
            group_of[buffer] = next((g for n, g in group_of.items() if n.startswith(owner)), max(group_of.values()))
        blocks = Blocks(Block(model, [n for n, g in group_of.items() if g == i]) for i in sorted(set(group_of.values())))
        cfg = model.pretrained_cfg
        return Backbone(blocks, feature_dim, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                        trunk=model)

    return build


BACKBONES = {
    "small-cnn": small_cnn,
    "resnet18": resnet(18),
    "resnet50": resnet(50),
    "mobilenet_v3_large": mobilenet_v3("large"),
    "mobilenet_v3_small": mobilenet_v3("small"),
    "efficientnet_b0": efficientnet_b0,
}


def check_backbone(name: str) -> None:
    if name.startswith("timm:"):
        import timm

        if not timm.is_model(name.removeprefix("timm:")):
            raise TlpipeError(f"'{name.removeprefix('timm:')}' is not a timm model (timm.list_models() names them; e.g. timm:resnet50).")
    elif name not in BACKBONES:
        raise TlpipeError(f"unknown backbone '{name}';{did_you_mean(name, BACKBONES)} choose one of {', '.join(BACKBONES)}, "
                          "or timm:<any timm model>.")


def build_backbone(name: str, input_size: int, weights: dict | None = None, source: str = "") -> Backbone:
    check_backbone(name)
    if name.startswith("timm:"):
        return timm_model(name.removeprefix("timm:"))(input_size, weights, source)
    return BACKBONES[name](input_size, weights, source)
