"""Deep adaptation networks (DAN; Long et al. 2015): multi-kernel maximum mean discrepancy.

MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t) measures how far apart the two domains' feature
distributions are in a kernel's feature space; DAN minimises it over a family of Gaussian kernels
whose bandwidths are multiples of the batch's mean squared distance, on the features and on the
class logits (the adapted task-specific layers).
"""

import torch

from tlpipe.data import ImageSet
from tlpipe.methods import domain
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)  # multiples of the mean squared distance


def mk_mmd(source: torch.Tensor, target: torch.Tensor, bandwidths=BANDWIDTHS) -> torch.Tensor:
    """Squared MMD with the sum of Gaussian kernels exp(-d^2 / (b * mean d^2)) (biased estimate)."""
    x = torch.cat([source, target]).float()
    distances = torch.cdist(x, x).pow(2)
    scale = distances.detach().mean()
    kernel = sum(torch.exp(-distances / (b * scale)) for b in bandwidths)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class DanLoss(domain.Alignment):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, source_features, target_features, source_logits, target_logits, coeff):
        mmd = mk_mmd(source_features, target_features) + mk_mmd(source_logits, target_logits)
        return self.weight * coeff * mmd, {"mmd": mmd}


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None) -> Classifier:
    """DAN from `source_model` on labelled `source` and unlabelled `target` images."""
    return domain.adapt(source_model, source, target, lambda m: DanLoss(), config, log, "DAN")
