"""Unsupervised domain adaptation: the loop every alignment method shares.

The model learns to classify labelled source images while an alignment loss pulls the features of
source and unlabelled target images together; the methods (DANN, CDAN+E, DAN, Deep CORAL) differ
only in that loss, an `Alignment` module. Its weight ramps up with training progress p following
Ganin's lambda_p = 2 / (1 + exp(-10 p)) - 1, so that the classifier forms before alignment pulls on
it; the learning rate anneals as mu0 / (1 + 10 p)^0.75 (tlpipe.train).

The recipe for pretrained backbones (the DANN and CDAN papers', Transfer-Learning-Library's) is a
config away: `bottleneck` puts a new linear + batch-norm + ReLU layer between backbone and a new head,
and `backbone_lr` trains the backbone at a fraction of the rate of the head and the alignment module.
With `sdat`, the classification loss is minimised sharpness-aware (tlpipe.methods.sdat).
"""

import contextlib
import copy
import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.errors import TlpipeError
from tlpipe.methods.sdat import SharpnessAware
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, fit, prepare, seed_everything, sgd, transfer_groups

Metrics = dict[str, torch.Tensor]


def ganin_lambda(p: float) -> float:
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class Alignment(nn.Module):
    """A domain-alignment loss over both domains' features and class logits, at weight `coeff`."""

    def forward(self, source_features: torch.Tensor, target_features: torch.Tensor, source_logits: torch.Tensor,
                target_logits: torch.Tensor, coeff: float) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


class _Joint(nn.Module):
    """Classifier and alignment as one module, so that data-parallel training sees one forward."""

    def __init__(self, model: Classifier, alignment: Alignment):
        super().__init__()
        self.model, self.alignment = model, alignment

    def forward(self, source_images, target_images, coeff: float):
        # A pass per domain: batch norm normalises each by its own batch statistics (target_statistics
        # gives evaluation the target's). Measured on digits -> digits-m, DANN with one joint pass instead
        # scored 1.3 and 5.0 points lower on the two seeds compared (benchmarks/results/accuracy-selftraining.md).
        source_features = self.model.features(source_images)
        target_features = self.model.features(target_images)
        source_logits = self.model.head(source_features)
        target_logits = self.model.head(target_features)
        loss, metrics = self.alignment(source_features, target_features, source_logits, target_logits, coeff)
        return source_logits, loss, metrics


@torch.no_grad()
def target_statistics(model: Classifier, images) -> Classifier:
    """`model` with batch norm's running statistics recomputed on the target images alone (AdaBN; Li et
    al. 2016), the average of their batches' statistics: an adapted model normalised each target batch by
    its own statistics in training, and is scored on target images the same way. Every other weight is
    left as it is, and so is each module's train or eval mode."""
    from tlpipe.scoring import scoring_batches

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = [(module, module.training) for module in model.modules()]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    try:
        for batch in scoring_batches(model, images):
            model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for module, training in modes:
            module.training = training
    return model


@contextlib.contextmanager
def untracked_batch_norm(model: nn.Module):
    """Batch norm on the batch's own statistics, leaving the running ones as they are: for an extra pass
    over part of a batch (SDAT's ascent point, AdaMatch's source-only logits), whose statistics are not
    the ones the model is evaluated under."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


def with_bottleneck(source_model: Classifier, width: int) -> Classifier:
    """A copy of `source_model`; with `width` (and none there yet), its backbone under a new bottleneck
    layer and a new head, which the adaptation trains on the source labels."""
    if not width or source_model.spec.bottleneck:
        return copy.deepcopy(source_model)
    model = Classifier(dataclasses.replace(copy.deepcopy(source_model.spec), bottleneck=width))
    backbone = {k: v for k, v in source_model.state_dict().items() if not k.startswith(("head.", "tasks."))}
    model.load_state_dict(backbone, strict=False)
    return model


def starting_model(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
                   name: str) -> Classifier:
    """The model an adaptation trains, once the data is checked and every RNG seeded: a copy of
    `source_model` in training mode (under a new bottleneck with config.bottleneck)."""
    if not source.is_labelled:
        raise TlpipeError(f"{name} needs labelled source images.")
    if len(target) == 0:
        raise TlpipeError(f"{name} needs unlabelled target images; the unlabelled target split is empty.")
    seed_everything(config.seed)
    return with_bottleneck(source_model, config.bottleneck).train()


def parameter_groups(model: Classifier, alignment: Alignment, config: TrainConfig) -> list[dict]:
    """The backbone at config.backbone_lr x the rate; bottleneck, head and alignment module at the rate."""
    return transfer_groups(model.blocks.parameters(), model.head_parameters(), config) + [
        {"params": list(alignment.parameters())}]


def adapt(
    source_model: Classifier,
    source: ImageSet,
    target: ImageSet,
    make_alignment: Callable[[Classifier], Alignment],
    config: TrainConfig,
    log: LogFn | None = None,
    name: str = "adaptation",
    sdat: bool = False,
) -> Classifier:
    """Trains a copy of `source_model` on labelled `source` and unlabelled `target` images with the
    classification loss plus the loss of `make_alignment(model)` (built after seeding, so that its
    initial weights follow the seed); with `sdat`, sharpness-aware on the classification loss."""
    model = starting_model(source_model, source, target, config, name)
    alignment = make_alignment(model).train()
    net = prepare(_Joint(model, alignment), config)
    source_batches = Batches(source, config.batch_size, config.seed, "source", augment=config.augment, share=2)
    target_batches = Batches(target, config.batch_size, config.seed, "target", labels=False, share=2)
    optimizer = sgd(parameter_groups(model, alignment, config), config)
    if sdat:
        optimizer = SharpnessAware(optimizer, model.parameters(), config.sdat_rho)

    def step(p: float):
        source_images, labels = next(source_batches)
        (target_images,) = next(target_batches)
        if sdat:  # the unwrapped model: this pass only finds the ascent direction, no data-parallel sync
            with untracked_batch_norm(model):  # nor does it move the running statistics evaluation uses
                optimizer.perturb(F.cross_entropy(model(source_images), labels))
        class_logits, alignment_loss, metrics = net(source_images, target_images, ganin_lambda(p))
        classification = F.cross_entropy(class_logits, labels)
        return classification + alignment_loss, {"loss": classification, **metrics}

    steps_per_epoch = max(source_batches.per_epoch, target_batches.per_epoch)
    fit(step, optimizer, config.epochs, steps_per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state={"model": model, "alignment": alignment, "source": source_batches, "target": target_batches},
        images_per_step=source_batches.batch_size + target_batches.batch_size,
        checkpoint_minutes=config.checkpoint_minutes)
    return target_statistics(model, target.images).eval()
