"""FixMatch (Sohn et al. 2020) for domain adaptation: labelled source images, unlabelled target ones.

On each unlabelled target image u the model's prediction q on the weak view is a pseudo-label where it
is confident; the strong view is trained towards it:

    loss = H(y, p(x_source)) + lambda_u * 1/|U| sum_u 1[max q(u) >= tau] H(argmax q(u), p(strong(u)))

with tau = 0.95 and lambda_u = 1 (the paper's), q taken without gradient. The loop is
tlpipe.methods.selftraining's.
"""

import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.methods.selftraining import Objective, pseudo_label_metrics, self_train
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

THRESHOLD = 0.95
UNLABELLED_WEIGHT = 1.0


def consistency(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                threshold: float = THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss (mean over all the batch's images) and which images passed the threshold."""
    confidence, pseudo_labels = F.softmax(weak_logits.detach().float(), dim=1).max(1)
    mask = confidence >= threshold
    loss = F.cross_entropy(strong_logits.float(), pseudo_labels, reduction="none")
    return (loss * mask).mean(), mask


class FixMatch(Objective):
    def forward(self, source_views, labels, target_weak, target_strong, progress):
        (source,) = source_views
        # A pass per domain, as in alignment (tlpipe.methods.domain): each normalised by its own statistics.
        source_logits = self.model(source)
        weak_logits, strong_logits = self.model(torch.cat([target_weak, target_strong])).chunk(2)
        supervised = F.cross_entropy(source_logits, labels)
        unlabelled, mask = consistency(weak_logits, strong_logits)
        return supervised + UNLABELLED_WEIGHT * unlabelled, {
            "loss": supervised, "consistency_loss": unlabelled, **pseudo_label_metrics(mask, THRESHOLD)}


def adapt(source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None) -> Classifier:
    """FixMatch from `source_model` on labelled `source` and unlabelled `target` images."""
    return self_train(source_model, source, target, FixMatch, config, log, "FixMatch")
