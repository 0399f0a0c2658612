"""Source-free adaptation: SHOT (Liang et al. 2020), from a source model and unlabelled target images alone.

For a model whose training data cannot be shared (a vendor's, another team's): no source image is
read. The classifier head (the source "hypothesis") is frozen and the feature extractor trained so
that target features fit it:
- information maximisation: each image's prediction confident (mean entropy down) and the batch's
  predictions spread over the classes (entropy of the mean prediction up):
  L_im = E_x[H(p(x))] + sum_k pbar_k log pbar_k;
- self-supervised pseudo-labels: class centroids of the target features, weighted by the predicted
  probabilities, c_k = sum_x p_k(x) f(x) / sum_x p_k(x); each image labelled by its nearest centroid
  (cosine distance), then the centroids recomputed from those labels and each image labelled again;
  L = L_im + beta CE(p(x), label(x)), beta = 0.3.
The pseudo-labels are recomputed over all target images PSEUDO_LABEL_ROUNDS times over training (the
paper's schedule); the backbone trains at config.backbone_lr x the rate of the rest of the feature
extractor (its bottleneck, where the source model has one). The paper's source model is trained with
label smoothing and a weight-normalised head; tlpipe adapts whatever source model it is given.
"""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.data.loader import Batches
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError
from tlpipe.methods.domain import target_statistics
from tlpipe.models import Classifier
from tlpipe.scoring import scoring_batches
from tlpipe.train import LogFn, TrainConfig, fit, prepare, seed_everything, sgd, transfer_groups

BETA = 0.3
PSEUDO_LABEL_ROUNDS = 15
EPSILON = 1e-5


def information_maximisation(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-image entropy minus the entropy of the mean prediction."""
    probabilities = F.softmax(logits.float(), dim=1)
    entropy = -(probabilities * torch.log(probabilities + EPSILON)).sum(1).mean()
    mean = probabilities.mean(0)
    return entropy + (mean * torch.log(mean + EPSILON)).sum()


def centroid_labels(features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """SHOT's pseudo-labels: nearest (cosine) probability-weighted centroid, then nearest centroid of
    those labels. `features` (N x D) as the head sees them, `probabilities` (N x K)."""
    features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)  # the paper's bias term
    features = features / features.norm(dim=1, keepdim=True)
    nearest = lambda centroids: (features @ F.normalize(centroids).T).argmax(1)  # noqa: E731  (cosine)
    labels = nearest(probabilities.T @ features / (EPSILON + probabilities.sum(0)[:, None]))
    one_hot = F.one_hot(labels, probabilities.shape[1]).to(features.dtype)
    return nearest(one_hot.T @ features / (EPSILON + one_hot.sum(0)[:, None]))


@torch.no_grad()
def _pseudo_labels(model: Classifier, images) -> torch.Tensor:
    """Centroid labels of every image, from the model in evaluation mode (its modes restored)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        features, probabilities = [], []
        for batch in scoring_batches(model, images):
            f = model.features(batch)
            features.append(f.float().cpu())
            probabilities.append(F.softmax(model.head(f).float(), 1).cpu())
        return centroid_labels(torch.cat(features), torch.cat(probabilities))
    finally:
        for module, training in modes:
            module.training = training


class _PseudoLabels:
    """The current pseudo-labels and when they were made: saved in checkpoints, so a resumed step
    trains towards the labels its predecessor had (not ones recomputed from a later model)."""

    def __init__(self, n: int):
        self.labels, self.steps = torch.zeros(n, dtype=torch.int64), 0

    def state_dict(self) -> dict:
        return {"labels": self.labels, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.labels, self.steps = state["labels"], int(state["steps"])


def adapt(source_model: Classifier, source: ImageSet | None, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None) -> Classifier:
    """SHOT from `source_model` on the unlabelled `target` images; `source` is never read (None is
    fine). The model keeps its structure: a bottleneck can only come with the source model."""
    if len(target) == 0:
        raise TlpipeError("SHOT needs unlabelled target images; the unlabelled target split is empty.")
    if source_model.spec.tasks or source_model.spec.head != "linear":
        raise TlpipeError("SHOT adapts a single-task classifier with a linear head.")
    seed_everything(config.seed)
    model = copy.deepcopy(source_model).train()
    for p in model.head.parameters():
        p.requires_grad_(False)  # the source hypothesis stays
    net = prepare(model, config)
    # The batches carry each image's row, so that its current pseudo-label can be looked up.
    rows = ImageSet(target.images, np.arange(len(target)), target.classes, target.ids)
    batches = Batches(rows, config.batch_size, config.seed, "target", augment=config.augment)
    pseudo = _PseudoLabels(len(target))
    optimizer = sgd(transfer_groups(model.blocks.parameters(), model.head_parameters(), config), config)
    every = max(1, math.ceil(config.epochs * batches.per_epoch / PSEUDO_LABEL_ROUNDS))
    on_device: list[torch.Tensor] = []

    def step(p: float):
        if pseudo.steps % every == 0 or not on_device:
            if pseudo.steps % every == 0:
                pseudo.labels = _pseudo_labels(model, target.images)
            on_device[:] = [pseudo.labels.to(device())]
        pseudo.steps += 1
        images, index = next(batches)
        logits = net(images)
        im = information_maximisation(logits)
        labels = on_device[0][index]
        self_supervised = F.cross_entropy(logits.float(), labels)
        return im + BETA * self_supervised, {"loss": self_supervised, "im_loss": im}

    fit(step, optimizer, config.epochs, batches.per_epoch, log, config.checkpoint_dir, config.checkpoint_every,
        state={"model": model, "target": batches, "pseudo_labels": pseudo}, images_per_step=batches.batch_size,
        checkpoint_minutes=config.checkpoint_minutes)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return target_statistics(model, target.images).eval()
