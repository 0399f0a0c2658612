"""Augmentation of labelled training batches: each image transformed under its own seed, which the
loader draws with the epoch's order (tlpipe.data.loader), so a resumed run draws the same and an image
looks the same whichever worker process or device augments it.

`photo` is the standard recipe for fine-tuning on photos: torchvision's RandomResizedCrop (a crop of
8-100% of the area, aspect 3/4-4/3, resized back to the image's size) and a horizontal flip, each image
with its own draw.

`colour` permutes each image's RGB channels and inverts half of the images. It makes a classifier
trained on one colouring (grey digits) ignore colour and polarity, the shift to a domain such as
digits-m; it is wrong for data whose classes depend on colour, so it is off unless asked for.
`colour` reads its draws off the seeds, vectorised over the batch; torchvision's v2 transforms draw
from the global RNG, so `photo` calls them once per image under its seed, in a forked RNG that leaves
the global one as it was.
"""

import itertools
from typing import Callable

import torch

from tlpipe.errors import TlpipeError

Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 NHWC images, int64 seeds (N,))

_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))


def colour(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images with their channels permuted and, for half of them, inverted."""
    n = len(images)
    seeds = seeds.to(images.device)
    order = _PERMUTATIONS.to(images.device)[seeds % len(_PERMUTATIONS)]
    inverted = (seeds // len(_PERMUTATIONS)) % 2 == 1
    images = torch.gather(images, 3, order.view(n, 1, 1, 3).expand_as(images))
    return torch.where(inverted.view(n, 1, 1, 1), 255 - images, images)


def photo(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images, each randomly resized-cropped and flipped, at the batch's height and width."""
    from torchvision.transforms import v2

    n, height, width, _ = images.shape
    transform = v2.Compose([v2.RandomResizedCrop((height, width), antialias=True), v2.RandomHorizontalFlip()])
    out = torch.empty_like(images)
    # manual_seed reseeds every device's generator: fork_rng must restore a GPU's too. The seeds come to
    # the host once a batch, not once an image.
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        for i, (image, seed) in enumerate(zip(images.permute(0, 3, 1, 2), seeds.tolist())):
            torch.manual_seed(seed)
            out[i] = transform(image).permute(1, 2, 0)
    return out


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "colour": colour, "photo": photo}
AUTO = "auto"  # `photo` for image folders, `none` for the built-in and torchvision domains


def get(name: str) -> Augment | None:
    if name not in AUGMENTATIONS:
        raise TlpipeError(f"unknown augmentation '{name}'; use {', '.join([*AUGMENTATIONS, AUTO])}.")
    return AUGMENTATIONS[name]


def check(name: str) -> None:
    """Refuses a name that is neither an augmentation nor `auto`."""
    if name != AUTO:
        get(name)


def resolve(name: str, spec: str) -> str:
    """The augmentation `name` means for images from the dataset `spec`: `auto` is `photo` for photo
    folders (imagefolder:) and `none` for the digit domains and torchvision datasets, where random
    crops of a 32 px glyph cut the digit."""
    if name == AUTO:
        return "photo" if spec.startswith("imagefolder:") else "none"
    check(name)
    return name
