"""How evaluate chooses the model to register without looking at the target test split.

With target validation labels the choice is by accuracy on them. Without, `select_by` names a
criterion that needs no target label: the source validation accuracy (cheap, but blind to the shift),
or one computed on the unlabelled target images from the model's predictions alone:
- information maximisation (IM): H(mean prediction) - mean H(prediction), over log C: high when the
  model is confident on each image and still predicts every class (Shi & Sha 2012; SHOT, Liang 2020);
- soft neighbourhood density (SND, Saito et al. 2021): the mean entropy of each image's softmax over
  its similarity to the other images' predictions: high when predictions form dense clusters.
Higher is better for every criterion.
"""

import numpy as np
import torch

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.scoring import accuracy, probabilities

CRITERIA = {
    "target-val": "target validation accuracy",
    "source-val": "source validation accuracy",
    "im": "information maximisation on unlabelled target images",
    "snd": "soft neighbourhood density on unlabelled target images",
}
SELECT_BY = ("auto", *CRITERIA)
UNLABELLED_SAMPLE = 2000  # unlabelled target images IM and SND look at (SND's cost is quadratic)
SND_TEMPERATURE = 0.05


def check(select_by: str) -> None:
    if select_by not in SELECT_BY:
        raise TlpipeError(f"unknown select_by '{select_by}'; use {', '.join(SELECT_BY)}.")


def resolve(select_by: str, target_val_count: int) -> str:
    """The criterion `select_by` means here: `auto` is target-val with target validation labels, IM without."""
    check(select_by)
    if select_by == "auto":
        return "target-val" if target_val_count else "im"
    if select_by == "target-val" and not target_val_count:
        raise TlpipeError("select_by=target-val needs target validation images, and the target validation split is "
                          "empty; set target_val_per_class above 0, or select_by to source-val, im or snd.")
    return select_by


def information_maximisation(p: torch.Tensor) -> float:
    p = p.clamp_min(1e-12)
    mean = p.mean(0)
    marginal = -(mean * mean.log()).sum()
    conditional = -(p * p.log()).sum(1).mean()
    return float((marginal - conditional) / np.log(p.shape[1]))


def soft_neighbourhood_density(p: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    f = torch.nn.functional.normalize(p.double(), dim=1)
    similarity = f @ f.T
    similarity.fill_diagonal_(-float("inf"))  # an image is not its own neighbour
    q = torch.softmax(similarity / temperature, 1)
    return float(-(q * q.clamp_min(1e-300).log()).sum(1).mean())


def sample(data: ImageSet, seed: int, n: int = UNLABELLED_SAMPLE) -> ImageSet:
    if len(data) <= n:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False)))


def scores(criterion: str, models: dict, target_val: ImageSet | None, source_val: ImageSet | None,
           target_unlabelled: ImageSet | None, val_accuracy: dict[str, float]) -> dict[str, float]:
    """Every model's value of the criterion (higher is better)."""
    if criterion == "target-val":
        return dict(val_accuracy)
    if criterion == "source-val":
        if source_val is None or not len(source_val):
            raise TlpipeError("select_by=source-val needs source validation images, and the source validation split is "
                              "empty; choose im or snd.")
        return {name: accuracy(model, source_val) for name, model in models.items()}
    if target_unlabelled is None or len(target_unlabelled) < 2:
        raise TlpipeError(f"select_by={criterion} needs unlabelled target images, and there are fewer than 2.")
    measure = information_maximisation if criterion == "im" else soft_neighbourhood_density
    images = sample(target_unlabelled, 0).images
    return {name: measure(probabilities(model, images)) for name, model in models.items()}
