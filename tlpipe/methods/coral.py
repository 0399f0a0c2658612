"""Deep CORAL (Sun & Saenko 2016): align the second-order statistics of the two domains' features.

The loss is the squared distance between the source and target feature covariances, plus that of
the means (as in the Transfer-Learning-Library's form), both averaged over entries.
"""

import torch

from tlpipe.data import ImageSet
from tlpipe.methods import domain
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    source, target = source.float(), target.float()
    mean_s, mean_t = source.mean(0, keepdim=True), target.mean(0, keepdim=True)
    cov_s = (source - mean_s).T @ (source - mean_s) / (len(source) - 1)
    cov_t = (target - mean_t).T @ (target - mean_t) / (len(target) - 1)
    return (mean_s - mean_t).pow(2).mean() + (cov_s - cov_t).pow(2).mean()


class CoralLoss(domain.Alignment):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, source_features, target_features, source_logits, target_logits, coeff):
        loss = coral(source_features, target_features)
        return self.weight * coeff * loss, {"coral": loss}


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None) -> Classifier:
    """Deep CORAL from `source_model` on labelled `source` and unlabelled `target` images."""
    return domain.adapt(source_model, source, target, lambda m: CoralLoss(), config, log, "Deep CORAL")
