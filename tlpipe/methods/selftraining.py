"""Self-training for unsupervised domain adaptation: the loop FixMatch and AdaMatch share.

Each step reads labelled source images (with the source augmentation, and for AdaMatch a strong view
too) and unlabelled target images in two views, weak (`crop`) and strong (`strong`, tlpipe.augment).
The model labels each weak target view; where it is confident, the strong view of that image is trained
towards the label, so the model learns to classify the target the way it already does where it is
sure, and to do so under heavy distortion. The methods differ in their `Objective`, the module around
the model that turns its logits into the loss. Batch norm: FixMatch passes each domain on its own and
ends with the target's statistics (tlpipe.methods.domain.target_statistics), as alignment does;
AdaMatch passes both domains together and keeps those joint statistics, which its random logit
interpolation trains the classifier to hold under.

When the target has a few labelled images, AdaMatch trains on them as on source images
(semi-supervised adaptation); the loop reads them as a third stream.
"""

from typing import Callable

import torch
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.methods.domain import starting_model, target_statistics
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, fit, prepare, sgd, transfer_groups

WEAK, STRONG = "crop", "strong"
Metrics = dict[str, torch.Tensor]


class Objective(nn.Module):
    """A self-training loss around `model`, called once a step (so that data-parallel training sees
    one forward). `strong_source`: whether it also reads a strong view of the source images."""

    strong_source = False
    joint_statistics = False  # True: keep the running statistics of training, not the target's

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, source_views: list[torch.Tensor], labels: torch.Tensor, target_weak: torch.Tensor,
                target_strong: torch.Tensor, progress: float) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


def pseudo_label_metrics(mask: torch.Tensor, threshold: torch.Tensor | float) -> Metrics:
    """What a step logs of its pseudo-labels: the share kept and the confidence they had to clear (the
    epoch logger scores them on target validation labels, where there are any: tracking.progress)."""
    return {"pseudo_label_share": mask.float().mean(), "pseudo_label_threshold": torch.as_tensor(threshold).float()}


def self_train(
    source_model: Classifier,
    source: ImageSet,
    target: ImageSet,
    make_objective: Callable[[Classifier], Objective],
    config: TrainConfig,
    log: LogFn | None = None,
    name: str = "self-training",
    labelled: ImageSet | None = None,
) -> Classifier:
    """Trains a copy of `source_model` (under a new bottleneck with config.bottleneck) on labelled
    `source` and unlabelled `target` images, and on `labelled` target images where given, with the loss
    of `make_objective(model)`."""
    model = starting_model(source_model, source, target, config, name)
    objective = make_objective(model).train()
    net = prepare(objective, config)
    views = (config.augment, STRONG) if objective.strong_source else (config.augment,)
    streams = 3 if labelled is not None and len(labelled) else 2
    source_batches = Batches(source, config.batch_size, config.seed, "source", augment=views, share=streams)
    target_batches = Batches(target, config.batch_size, config.seed, "target", augment=(WEAK, STRONG), labels=False,
                             share=streams)
    labelled_batches = (Batches(labelled, config.batch_size, config.seed, "labelled", augment=views, share=streams)
                        if streams == 3 else None)
    optimizer = sgd(transfer_groups(model.blocks.parameters(), model.head_parameters(), config), config)

    def step(p: float):
        *source_views, labels = next(source_batches)
        if labelled_batches is not None:
            *labelled_views, target_labels = next(labelled_batches)
            source_views = [torch.cat(pair) for pair in zip(source_views, labelled_views)]
            labels = torch.cat([labels, target_labels])
        weak, strong = next(target_batches)
        return net(source_views, labels, weak, strong, p)

    steps_per_epoch = max(source_batches.per_epoch, target_batches.per_epoch)
    state = {"model": model, "source": source_batches, "target": target_batches}
    if labelled_batches is not None:
        state["labelled"] = labelled_batches
    images_per_step = (source_batches.batch_size * len(views) + 2 * target_batches.batch_size
                       + (labelled_batches.batch_size * len(views) if labelled_batches is not None else 0))
    fit(step, optimizer, config.epochs, steps_per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state=state, images_per_step=images_per_step, checkpoint_minutes=config.checkpoint_minutes)
    return (model if objective.joint_statistics else target_statistics(model, target.images)).eval()
