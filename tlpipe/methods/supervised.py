"""Plain supervised training on labelled images: source pretraining and the target-only baseline."""

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.models import Classifier
from tlpipe.train import Batches, LogFn, TrainConfig, device, fit, prepare, seed_everything, sgd


def on_device(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images).to(device()), torch.from_numpy(data.labels).to(device())


def train_classifier(
    model: Classifier,
    data: ImageSet,
    config: TrainConfig,
    param_groups: Iterable | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    log: LogFn | None = None,
) -> dict[str, float]:
    """Cross-entropy training of `model` (in the train/eval modes its caller set) on `data`."""
    generator = seed_everything(config.seed)
    net = prepare(model, config)
    batches = Batches(*on_device(data), batch_size=config.batch_size, generator=generator, augment=config.augment)
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
               state={"model": model, "batches": batches}, images_per_step=batches.batch_size)


def pretrain(model: Classifier, source: ImageSet, config: TrainConfig, log: LogFn | None = None) -> dict[str, float]:
    model.train()
    return train_classifier(model, source, config, log=log)
