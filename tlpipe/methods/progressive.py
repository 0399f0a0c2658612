"""Progressive neural networks (Rusu et al. 2016): transfer without touching the source model.

The source model's blocks become a frozen first column; a freshly initialised second column learns
the target task and receives, at every level, the first column's output through a zero-initialised
adapter. The source behaviour cannot change, and at worst the new column learns to ignore the
laterals and matches training from scratch.
"""

import copy
import dataclasses

import torch

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.methods.supervised import train_classifier
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig


def progressive(source_model: Classifier, labelled: ImageSet, config: TrainConfig, log: LogFn | None = None) -> Classifier:
    if source_model.spec.progressive or source_model.spec.head != "linear":
        raise TlpipeError("strategy progressive needs a plain source model as its first column.")
    spec = dataclasses.replace(copy.deepcopy(source_model.spec), progressive=True, tasks=[])
    torch.manual_seed(config.seed)
    model = Classifier(spec)
    model.preprocess.load_state_dict(source_model.preprocess.state_dict())
    model.column1.load_state_dict(source_model.blocks.state_dict())
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    train_classifier(model, labelled, config, param_groups=trainable, log=log)
    return model
