"""Zero-shot learning by class attributes: recognise classes never seen in training.

Each class is an attribute signature (tlpipe.data.attributes). Training uses seen classes only:
- `attributes` (direct attribute prediction, Lampert et al. 2009): the head predicts every attribute
  (binary cross-entropy against the true class's signature); a class scores the log-likelihood of its
  signature, so an unseen class is recognised by its attributes.
- `embedding` (a compatibility model, as in DeViSE / ALE): images f(x) and signatures g(a) share a
  space; cross-entropy over the seen classes' scores f(x) . g(a) trains both maps.
The trunk starts from the source model, which itself never saw an unseen class.
"""

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig, fit, prepare, seed_everything, sgd, transfer_groups

HEADS = ("attributes", "embedding")


def zero_shot(
    source_model: Classifier,
    train: ImageSet,
    head: str,
    table: dict[str, list[float]],
    config: TrainConfig,
    log: LogFn | None = None,
) -> Classifier:
    """A classifier over all classes with a zero-shot `head`, trained on `train` (seen classes only)."""
    if head not in HEADS:
        raise TlpipeError(f"unknown zero-shot head '{head}'; use {' or '.join(HEADS)}.")
    if not table:
        raise TlpipeError("zero-shot needs an attribute table; set the attributes parameter (a CSV file).")
    classes = source_model.spec.classes
    seen = np.unique(train.labels)
    spec = dataclasses.replace(copy.deepcopy(source_model.spec), head=head, attributes=[table[c] for c in classes],
                               progressive=False, tasks=[])
    seed_everything(config.seed)
    model = Classifier(spec)
    model.preprocess.load_state_dict(source_model.preprocess.state_dict())
    model.blocks.load_state_dict(source_model.blocks.state_dict())
    model.train()
    net = prepare(model, config)
    batches = Batches(train, config.batch_size, config.seed)
    seen_index = torch.from_numpy(seen).to(device())
    position = torch.full((len(classes),), -1, dtype=torch.int64, device=device())
    position[seen_index] = torch.arange(len(seen), device=device())
    n_attributes = len(spec.attributes[0])
    optimizer = sgd(transfer_groups(model.blocks.parameters(), model.head.parameters(), config), config)

    def step(p: float):
        images, labels = next(batches)
        scores = net(images)
        if head == "attributes":
            # The true class's score is minus the summed binary cross-entropy of its signature.
            loss = -scores.gather(1, labels[:, None]).mean() / n_attributes
        else:
            loss = F.cross_entropy(scores[:, seen_index], position[labels])
        accuracy = (seen_index[scores[:, seen_index].argmax(1)] == labels).float().mean()
        return loss, {"loss": loss, "seen_accuracy": accuracy}

    fit(step, optimizer, config.epochs, batches.per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state={"model": model, "batches": batches}, images_per_step=batches.batch_size,
        checkpoint_minutes=config.checkpoint_minutes)
    return model.eval()
