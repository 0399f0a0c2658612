"""Multi-task learning: one shared trunk, one head per task, trained jointly.

The tasks are the labelled source and the labelled target (the multilingual speech recognition
pattern: shared lower layers, task-specific upper layers). Starting from the source model, the trunk
and the source head keep learning the source task while a new head learns the target task; every
step takes a batch of each task, and the loss is target + source_weight * source. The result predicts
with the target head and keeps the source head as task "source", for the per-task evaluation.
"""

import copy
import dataclasses

import torch.nn.functional as F
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, fit, prepare, seed_everything, sgd


class _Tasks(nn.Module):
    """Both tasks in one forward, so that data-parallel training sees one module."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, source_images, target_images):
        model = self.model
        return model.tasks["source"](model.features(source_images)), model.head(model.features(target_images))


def multitask(
    source_model: Classifier,
    source: ImageSet,
    labelled: ImageSet,
    source_weight: float,
    config: TrainConfig,
    log: LogFn | None = None,
) -> Classifier:
    if not source.is_labelled or not labelled.is_labelled:
        raise TlpipeError("multitask needs labelled source and target images.")
    if source_model.spec.progressive or source_model.spec.head != "linear":
        raise TlpipeError("strategy multitask needs a plain source model.")
    seed_everything(config.seed)
    spec = dataclasses.replace(copy.deepcopy(source_model.spec), tasks=["source"])
    model = Classifier(spec)  # a new target head; the trunk and the source head come from the source model
    own = source_model.state_dict()
    model.load_state_dict({**{k: v for k, v in own.items() if not k.startswith("head.")},
                           **{f"tasks.source.{k[5:]}": v for k, v in own.items() if k.startswith("head.")},
                           **{k: v for k, v in model.state_dict().items() if k.startswith("head.")}})
    model.train()
    net = prepare(_Tasks(model), config)
    source_batches = Batches(source, config.batch_size, config.seed, "source", share=2)
    target_batches = Batches(labelled, config.batch_size, config.seed, "target", share=2)
    optimizer = sgd(model.parameters(), config)

    def step(p: float):
        source_images, source_labels = next(source_batches)
        target_images, target_labels = next(target_batches)
        source_logits, target_logits = net(source_images, target_images)
        source_loss = F.cross_entropy(source_logits, source_labels)
        target_loss = F.cross_entropy(target_logits, target_labels)
        metrics = {"loss": target_loss, "source_loss": source_loss,
                   "accuracy": (target_logits.argmax(1) == target_labels).float().mean()}
        return target_loss + source_weight * source_loss, metrics

    fit(step, optimizer, config.epochs, target_batches.per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state={"model": model, "source": source_batches, "target": target_batches},
        images_per_step=source_batches.batch_size + target_batches.batch_size,
        checkpoint_minutes=config.checkpoint_minutes)
    return model
