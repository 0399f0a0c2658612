"""Augmentation of labelled training batches, drawn per image from the batch sampler's seeded generator.

`colour` permutes each image's RGB channels and inverts half of the images. It makes a classifier
trained on one colouring (grey digits) ignore colour and polarity, the shift to a domain such as
digits-m; it is wrong for data whose classes depend on colour, so it is off unless asked for.
The draws are vectorised over the batch (torchvision's v2 transforms draw once per call, one set of
parameters for a whole batch) and come from the sampler's generator, so a resumed run draws the same.
"""

import itertools
from typing import Callable

import torch

from tlpipe.errors import TlpipeError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))


def colour(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 NHWC images with their channels permuted and, for half of them, inverted."""
    n = len(images)
    order = _PERMUTATIONS[torch.randint(len(_PERMUTATIONS), (n,), generator=generator)].to(images.device)
    inverted = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    images = torch.gather(images, 3, order.view(n, 1, 1, 3).expand_as(images))
    return torch.where(inverted.view(n, 1, 1, 1), 255 - images, images)


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "colour": colour}


def get(name: str) -> Augment | None:
    if name not in AUGMENTATIONS:
        raise TlpipeError(f"unknown augmentation '{name}'; use {', '.join(AUGMENTATIONS)}.")
    return AUGMENTATIONS[name]
