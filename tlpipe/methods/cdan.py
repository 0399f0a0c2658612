"""Conditional domain-adversarial training with entropy conditioning (CDAN+E; Long et al. 2018).

The discriminator sees the multilinear map of features f and class predictions g (their outer
product f g^T, or a random projection of it when that is large), so it aligns the class-conditional
distributions rather than the marginal ones. Entropy conditioning weighs each example by
1 + exp(-H(g)): confident predictions count more, uncertain ones (likely wrong) less.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.data import ImageSet
from tlpipe.methods import domain
from tlpipe.methods.dann import DomainDiscriminator, domain_loss, reverse_gradient
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

MAX_MULTILINEAR = 4096  # above this, the outer product is replaced by its randomized version


class MultilinearMap(nn.Module):
    """f (x) g, flattened; when d * c exceeds MAX_MULTILINEAR, (R_f f) * (R_g g) / sqrt(dim) with fixed
    random Gaussian matrices (the paper's randomized multilinear map)."""

    def __init__(self, feature_dim: int, classes: int, dim: int = 1024):
        super().__init__()
        self.randomized = feature_dim * classes > MAX_MULTILINEAR
        self.output_dim = dim if self.randomized else feature_dim * classes
        if self.randomized:
            generator = torch.Generator().manual_seed(0)
            self.register_buffer("rf", torch.randn(feature_dim, dim, generator=generator))
            self.register_buffer("rg", torch.randn(classes, dim, generator=generator))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomized:
            return (f @ self.rf) * (g @ self.rg) / self.output_dim**0.5
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


def entropy_weights(probabilities: torch.Tensor) -> torch.Tensor:
    """1 + exp(-entropy) per example, normalised to mean 1."""
    entropy = -(probabilities * torch.log(probabilities + 1e-5)).sum(1)
    weights = 1 + torch.exp(-entropy)
    return weights / weights.mean()


class CdanLoss(domain.Alignment):
    def __init__(self, feature_dim: int, classes: int, entropy: bool = True):
        super().__init__()
        self.map = MultilinearMap(feature_dim, classes)
        self.discriminator = DomainDiscriminator(self.map.output_dim)
        self.entropy = entropy

    def forward(self, source_features, target_features, source_logits, target_logits, coeff):
        features = torch.cat([source_features, target_features]).float()
        # The predictions condition the discriminator; the gradient reaches the classifier through f only.
        probabilities = F.softmax(torch.cat([source_logits, target_logits]).float(), dim=1).detach()
        logits = self.discriminator(reverse_gradient(self.map(features, probabilities), coeff))
        n = len(source_features)
        weights = None
        if self.entropy:  # each domain's weights have mean 1, so both domains count alike
            weights = torch.cat([entropy_weights(probabilities[:n]), entropy_weights(probabilities[n:])])
        return domain_loss(logits, n, weights)


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None, sdat: bool = False) -> Classifier:
    """CDAN+E from `source_model` on labelled `source` and unlabelled `target` images."""
    return domain.adapt(source_model, source, target, lambda m: CdanLoss(m.feature_dim, len(m.spec.classes)), config,
                        log, "CDAN+E", sdat=sdat)
