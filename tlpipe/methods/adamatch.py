"""AdaMatch (Berthelot et al. 2022): FixMatch made for a shift between domains.

Source images come in a weak and a strong view, target images likewise; one step:
1. Random logit interpolation. The logits of the source views from the pass over source and target
   together (z'), and from a pass over the source alone (z''), are mixed element-wise,
   z_s = lambda z' + (1 - lambda) z'' with lambda ~ U(0, 1): the classifier must hold whichever batch
   statistics the source is normalised by. The source-only pass leaves batch norm's running statistics
   alone (evaluation uses those of the joint batches).
2. Distribution alignment. The target's weak-view probabilities are rescaled by the ratio of the
   batch's mean source probabilities (weak view) to its mean target ones, and renormalised: the
   pseudo-labels follow the source's label distribution.
3. Relative confidence threshold. A pseudo-label is kept when its aligned probability is at least
   tau = 0.9 times the mean top-class probability of the weak source views.
4. Loss: the mean of the cross-entropies of the two source views, plus mu(t) times the kept
   pseudo-labels' cross-entropy on the strong target views (mean over all target images), where
   mu(t) = 1/2 - cos(min(pi, 2 pi t)) / 2 rises from 0 to 1 over the first half of training.
With labelled target images (tlpipe.methods.selftraining), they join the source views.
"""

import math

import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.methods.domain import untracked_batch_norm
from tlpipe.methods.selftraining import Objective, pseudo_label_metrics, self_train
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

TAU = 0.9


def interpolate(joint_logits: torch.Tensor, alone_logits: torch.Tensor) -> torch.Tensor:
    """Random logit interpolation: lambda z' + (1 - lambda) z'', lambda uniform per element."""
    weights = torch.rand_like(joint_logits)
    return weights * joint_logits + (1 - weights) * alone_logits


def aligned(target_probabilities: torch.Tensor, source_probabilities: torch.Tensor) -> torch.Tensor:
    """Distribution alignment: target probabilities times E[source] / E[target], renormalised."""
    ratio = (source_probabilities.mean(0) + 1e-6) / (target_probabilities.mean(0) + 1e-6)
    scaled = target_probabilities * ratio
    return scaled / scaled.sum(1, keepdim=True)


def target_weight(progress: float) -> float:
    """mu(t): 0 at the start, 1 from half-way through training on."""
    return 0.5 - math.cos(min(math.pi, 2 * math.pi * progress)) / 2


def target_loss(source_weak_logits: torch.Tensor, target_weak_logits: torch.Tensor,
                target_strong_logits: torch.Tensor, tau: float = TAU):
    """AdaMatch's unlabelled loss (mean over all target images), the kept images and the threshold."""
    source_probabilities = F.softmax(source_weak_logits.detach().float(), dim=1)
    pseudo = aligned(F.softmax(target_weak_logits.detach().float(), dim=1), source_probabilities)
    threshold = tau * source_probabilities.max(1).values.mean()
    confidence, pseudo_labels = pseudo.max(1)
    mask = confidence >= threshold
    loss = F.cross_entropy(target_strong_logits.float(), pseudo_labels, reduction="none")
    return (loss * mask).mean(), mask, threshold


class AdaMatch(Objective):
    strong_source = True
    joint_statistics = True

    def forward(self, source_views, labels, target_weak, target_strong, progress):
        source = torch.cat(source_views)  # weak, then strong
        n = len(source_views[0])
        logits = self.model(torch.cat([source, target_weak, target_strong]))
        with untracked_batch_norm(self.model):
            alone = self.model(source)
        source_logits = interpolate(logits[: 2 * n], alone)
        target_weak_logits, target_strong_logits = logits[2 * n :].chunk(2)
        supervised = 0.5 * (F.cross_entropy(source_logits[:n], labels) + F.cross_entropy(source_logits[n:], labels))
        unlabelled, mask, threshold = target_loss(source_logits[:n], target_weak_logits, target_strong_logits)
        return supervised + target_weight(progress) * unlabelled, {
            "loss": supervised, "consistency_loss": unlabelled, **pseudo_label_metrics(mask, threshold)}


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None, labelled: ImageSet | None = None) -> Classifier:
    """AdaMatch from `source_model` on labelled `source`, unlabelled `target` and, where there are any,
    `labelled` target images."""
    return self_train(source_model, source, target, AdaMatch, config, log, "AdaMatch", labelled=labelled)
