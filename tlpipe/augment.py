"""Augmentation of training batches: each image transformed under its own seed, which the loader draws
with the epoch's order (tlpipe.data.loader), so a resumed run draws the same and an image looks the
same whichever worker process or device augments it.

- `crop`: the small-image recipe (CIFAR's, SVHN's): each image shifted by up to 1/8 of its side, the
  edges repeated into the gap; nothing is cut off that a 28-64 px glyph needs.
- `photo`: the photo recipe: torchvision's RandomResizedCrop (8-100% of the area, aspect 3/4-4/3,
  resized back to the image's size).
- `flip`: a horizontal mirror of half the images. Safe for natural photos (objects, animals, scenes);
  wrong wherever orientation carries the class (digits, text, signs, documents), so only on request:
  `photo+flip` is the usual ImageNet fine-tuning recipe.
- `colour`: each image's RGB channels permuted and half of the images inverted. It makes a classifier
  trained on one colouring (grey digits) ignore colour and polarity, the shift to a domain such as
  digits-m; wrong for data whose classes depend on colour, so only on request.
- `strong`: `crop`, then RandAugment (two random operations at a random magnitude) and a random erased
  patch: the strong view of self-training (FixMatch, AdaMatch); no flips, so valid for digits too.

Names combine with `+`, applied left to right, each part under a seed of its own drawn from the image's.
`auto` picks by what the images are (resolve). `crop`, `flip` and `colour` read their draws off the
seeds, vectorised over the batch; torchvision's v2 transforms draw from the global RNG, so `photo` and
`strong` call them once per image under its seed, in a forked RNG that leaves the global one as it was.
"""

import itertools
from typing import Callable

import torch

from tlpipe.errors import TlpipeError

Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 NHWC images, int64 seeds (N,))

_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(3))))
SMALL_IMAGE = 64  # px: images up to this side are glyph- or thumbnail-sized, where `auto` shifts, never crops
_SEED_BITS = 2**62 - 1


def derived_seeds(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """Seeds for another, independent draw from the same images' seeds (a multiplicative hash, on the
    seeds' own device: no host synchronisation)."""
    offset = (salt * 0x9E3779B97F4A7C15) % 2**64
    mixed = (seeds + (offset - 2**64 if offset >= 2**63 else offset)) * 0x5851F42D4C957F2D  # wraps modulo 2^64
    return (mixed ^ (mixed >> 29)) & _SEED_BITS


def colour(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images with their channels permuted and, for half of them, inverted."""
    n = len(images)
    seeds = seeds.to(images.device)
    order = _PERMUTATIONS.to(images.device)[seeds % len(_PERMUTATIONS)]
    inverted = (seeds // len(_PERMUTATIONS)) % 2 == 1
    images = torch.gather(images, 3, order.view(n, 1, 1, 3).expand_as(images))
    return torch.where(inverted.view(n, 1, 1, 1), 255 - images, images)


def crop(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images, each shifted by up to 1/8 of its height and width, edge pixels repeated."""
    n, height, width, _ = images.shape
    seeds = seeds.to(images.device)
    reach_y, reach_x = max(1, height // 8), max(1, width // 8)
    dy = seeds % (2 * reach_y + 1) - reach_y
    dx = (seeds // (2 * reach_y + 1)) % (2 * reach_x + 1) - reach_x
    rows = (torch.arange(height, device=images.device) + dy.view(n, 1)).clamp(0, height - 1)
    cols = (torch.arange(width, device=images.device) + dx.view(n, 1)).clamp(0, width - 1)
    return images[torch.arange(n, device=images.device).view(n, 1, 1), rows.view(n, height, 1), cols.view(n, 1, width)]


def flip(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images, half of them mirrored left to right."""
    mirrored = ((seeds.to(images.device) >> 40) & 1).bool().view(-1, 1, 1, 1)
    return torch.where(mirrored, images.flip(2), images)


def _per_image(transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               seeds: torch.Tensor) -> torch.Tensor:
    """`transform` (drawing from the global RNG) on each CHW image under its own seed."""
    out = torch.empty_like(images)
    # manual_seed reseeds every device's generator: fork_rng must restore a GPU's too. The seeds come to
    # the host once a batch, not once an image.
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        for i, (image, seed) in enumerate(zip(images.permute(0, 3, 1, 2), seeds.tolist())):
            torch.manual_seed(seed)
            out[i] = transform(image).permute(1, 2, 0)
    return out


def photo(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images, each randomly resized-cropped, at the batch's height and width."""
    from torchvision.transforms import v2

    return _per_image(v2.RandomResizedCrop(images.shape[1:3], antialias=True), images, seeds)


def strong(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images shifted (`crop`), then each through two RandAugment operations at a magnitude of
    its own (FixMatch's variant) and with one random patch erased."""
    from torchvision.transforms import v2

    erase = v2.RandomErasing(p=1.0, scale=(0.02, 0.2), value=127)

    def transform(image):
        magnitude = int(torch.randint(1, 16, ()))  # of 31 bins: rotations up to 15 degrees, shears up to 0.15
        return erase(v2.RandAugment(num_ops=2, magnitude=magnitude)(image))

    return _per_image(transform, crop(images, seeds), derived_seeds(seeds, 1))


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "crop": crop, "photo": photo, "flip": flip,
                                            "colour": colour, "strong": strong}
AUTO = "auto"


def _combined(parts: list[Augment]) -> Augment:
    def augment(images, seeds):
        for salt, part in enumerate(parts):
            images = part(images, derived_seeds(seeds, 1000 + salt) if salt else seeds)
        return images

    return augment


def get(name: str) -> Augment | None:
    """The augmentation a name (parts joined by `+`) stands for; None for `none`."""
    parts = name.split("+")
    unknown = [part for part in parts if part not in AUGMENTATIONS]
    if unknown or (len(parts) > 1 and "none" in parts):
        raise TlpipeError(f"unknown augmentation '{name}'; use {', '.join([*AUGMENTATIONS, AUTO])}, "
                          "or several joined by + (e.g. photo+flip).")
    if len(parts) == 1:
        return AUGMENTATIONS[name]
    return _combined([AUGMENTATIONS[part] for part in parts])


def check(name: str) -> None:
    """Refuses a name that is neither an augmentation nor `auto`."""
    if name != AUTO:
        get(name)


def resolve(name: str, meta: dict) -> str:
    """The augmentation `name` means for the images of a dataset (its metadata: spec and shape). `auto`
    is, for image folders, `crop` up to SMALL_IMAGE px a side (a random crop of a small glyph or
    thumbnail cuts the class away) and `photo` above; never a flip or a colour change, which are wrong
    for some folders (text, signs; colour-coded classes) and only the user can tell. The built-in digit
    domains and torchvision datasets get `none`, the setting the accuracy benchmark measures."""
    if name == AUTO:
        if not meta["spec"].startswith("imagefolder:"):
            return "none"
        return "crop" if min(meta["shape"][1:3]) <= SMALL_IMAGE else "photo"
    check(name)
    return name
