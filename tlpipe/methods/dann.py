"""Domain-adversarial training (DANN; Ganin & Lempitsky 2015, Ganin et al. 2016).

A domain discriminator, fed through a gradient reversal layer, tries to tell source from target
features; the reversed gradient pushes the features towards being domain-invariant. The reversal
coefficient follows Ganin's lambda_p (tlpipe.methods.domain).
"""

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.methods import domain
from tlpipe.methods.domain import Alignment
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -coeff on the way back."""
    return _ReverseGradient.apply(x, coeff)


class DomainDiscriminator(nn.Module):
    """Source-vs-target classifier; outputs one logit per input (source = 1)."""

    def __init__(self, input_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs).squeeze(1)


def domain_loss(logits: torch.Tensor, n_source: int, weights: torch.Tensor | None = None):
    """Binary cross-entropy of the discriminator (source first in `logits`) and its accuracy."""
    labels = torch.zeros_like(logits, dtype=torch.float32)
    labels[:n_source] = 1
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels, weight=weights)
    accuracy = ((logits > 0).float() == labels).float().mean()
    return loss, {"domain_loss": loss, "domain_accuracy": accuracy}


class DannLoss(Alignment):
    def __init__(self, feature_dim: int):
        super().__init__()
        self.discriminator = DomainDiscriminator(feature_dim)

    def forward(self, source_features, target_features, source_logits, target_logits, coeff):
        features = torch.cat([source_features, target_features])
        return domain_loss(self.discriminator(reverse_gradient(features, coeff)), len(source_features))


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None, sdat: bool = False) -> Classifier:
    """DANN from `source_model` on labelled `source` and unlabelled `target` images."""
    return domain.adapt(source_model, source, target, lambda m: DannLoss(m.feature_dim), config, log, "DANN", sdat=sdat)
