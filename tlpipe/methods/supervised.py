"""Plain supervised training on labelled images: source pretraining and the target-only baseline."""

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, fit, prepare, seed_everything, sgd


def train_classifier(
    model: Classifier,
    data: ImageSet,
    config: TrainConfig,
    param_groups: Iterable | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    log: LogFn | None = None,
) -> dict[str, float]:
    """Cross-entropy training of `model` (in the train/eval modes its caller set) on `data`."""
    seed_everything(config.seed)
    net = prepare(model, config)
    batches = Batches(data, config.batch_size, config.seed, augment=config.augment)
    optimizer = sgd(param_groups if param_groups is not None else model.parameters(), config)

    def step(p: float):
        images, labels = next(batches)
        logits = net(images)
        loss = F.cross_entropy(logits, labels)
        metrics = {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}
        if penalty is not None:
            extra = penalty()
            metrics["penalty"] = extra
            loss = loss + extra
        return loss, metrics

    return fit(step, optimizer, config.epochs, batches.per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
               state={"model": model, "batches": batches}, images_per_step=batches.batch_size,
               checkpoint_minutes=config.checkpoint_minutes)


def pretrain(model: Classifier, source: ImageSet, config: TrainConfig, log: LogFn | None = None) -> dict[str, float]:
    model.train()
    return train_classifier(model, source, config, log=log)
