"""Augmentation of labelled training batches, drawn per image from the batch sampler's seeded generator.

`photo` is the standard recipe for fine-tuning on photos: torchvision's RandomResizedCrop (a crop of
8-100% of the area, aspect 3/4-4/3, resized back to the image's size) and a horizontal flip, each image
with its own draw.

`colour` permutes each image's RGB channels and inverts half of the images. It makes a classifier
trained on one colouring (grey digits) ignore colour and polarity, the shift to a domain such as
digits-m; it is wrong for data whose classes depend on colour, so it is off unless asked for.
The draws come from the sampler's generator, so a resumed run draws the same: `colour` draws vectorised over
the batch; torchvision's v2 transforms draw once per call from the global RNG, so `photo` calls them once
per image under a seed from the generator, in a forked RNG that leaves the global one as it was.
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


def photo(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 NHWC images, each randomly resized-cropped and flipped, at the batch's height and width."""
    from torchvision.transforms import v2

    n, height, width, _ = images.shape
    transform = v2.Compose([v2.RandomResizedCrop((height, width), antialias=True), v2.RandomHorizontalFlip()])
    seeds = torch.randint(2**62, (n,), generator=generator)
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, image in enumerate(images.permute(0, 3, 1, 2)):
            torch.manual_seed(int(seeds[i]))
            out[i] = transform(image).permute(1, 2, 0)
    return out


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "colour": colour, "photo": photo}


def get(name: str) -> Augment | None:
    if name not in AUGMENTATIONS:
        raise TlpipeError(f"unknown augmentation '{name}'; use {', '.join(AUGMENTATIONS)}.")
    return AUGMENTATIONS[name]
