"""Minimum Class Confusion (MCC; Jin et al. 2020), alone and with CDAN+E.

MCC needs no discriminator: on unlabelled target images it reduces how much the classifier confuses
classes with each other. With temperature-scaled predictions Y = softmax(z / T) of a target batch and
per-example weights W_i = B (1 + exp(-H(Y_i))) / sum_j (1 + exp(-H(Y_j))) (confident examples count
more), the class confusion matrix is C = Y^T diag(W) Y; each row is normalised to sum 1, and the loss
is the mean over classes of the off-diagonal mass: L = sum_{j != j'} C~_jj' / classes.
"""

import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.methods import domain
from tlpipe.methods.cdan import CdanLoss
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

TEMPERATURE = 2.5  # the paper's and Transfer-Learning-Library's value for Office-31 and Office-Home


def class_confusion(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The MCC loss of a batch of target logits (batch x classes)."""
    batch, classes = logits.shape
    predictions = F.softmax(logits.float() / temperature, dim=1)
    entropy = -(predictions * torch.log(predictions + 1e-5)).sum(1).detach()
    weights = 1 + torch.exp(-entropy)
    weights = batch * weights / weights.sum()
    confusion = (predictions * weights.unsqueeze(1)).T @ predictions
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / classes


class MccLoss(domain.Alignment):
    """MCC at a constant weight (it does not ramp up: it shapes predictions, it does not fight a discriminator)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, source_features, target_features, source_logits, target_logits, coeff):
        loss = class_confusion(target_logits)
        return self.weight * loss, {"mcc_loss": loss}


class CdanMccLoss(domain.Alignment):
    """CDAN+E's adversarial loss plus MCC."""

    def __init__(self, feature_dim: int, classes: int):
        super().__init__()
        self.cdan, self.mcc = CdanLoss(feature_dim, classes), MccLoss()

    def forward(self, *inputs):
        cdan_loss, cdan_metrics = self.cdan(*inputs)
        mcc_loss, mcc_metrics = self.mcc(*inputs)
        return cdan_loss + mcc_loss, cdan_metrics | mcc_metrics


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None) -> Classifier:
    """MCC from `source_model` on labelled `source` and unlabelled `target` images."""
    return domain.adapt(source_model, source, target, lambda m: MccLoss(), config, log, "MCC")


def adapt_cdan(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
               log: LogFn | None = None, sdat: bool = False) -> Classifier:
    """CDAN+E+MCC from `source_model`."""
    return domain.adapt(source_model, source, target, lambda m: CdanMccLoss(m.feature_dim, len(m.spec.classes)),
                        config, log, "CDAN+MCC", sdat=sdat)
