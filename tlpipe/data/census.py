"""What an image folder holds, from its listing alone (no image is read, so it costs a directory walk or
an S3 listing): its classes and how many images each has. Preflight uses it to find, before anything
runs, what ingest would otherwise find after the data was downloaded and decoded: classes that differ
between the domains, and target classes too small to split.

A count here is an upper bound on what the splits see: exact copies of one image count once there.
"""

import math
import os
from collections import Counter
from pathlib import Path

from tlpipe import storage
from tlpipe.data import imagefolder
from tlpipe.data.splits import HELD_OUT

CERTAIN = 0.95  # a split that holds at least this often (over seeds) draws no warning


def image_counts(location: str) -> dict[str, int]:
    """Images per class of an image folder (a directory or an s3:// prefix), by the rules ingest reads it
    with: one sub-folder per class, its files directly inside, dotfiles and folder markers left out."""
    if storage.is_s3(location):
        counts = Counter()
        for key in storage.list_keys(location):
            parts = key.split("/")
            if len(parts) == 2 and not parts[0].startswith(".") and not parts[1].startswith("."):
                counts[parts[0]] += 1
        return dict(sorted(counts.items()))
    return {folder.name: sum(1 for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith("."))
            for folder in imagefolder.class_folders(Path(location))}


def split_holds(images: int, labelled: int) -> float:
    """How often (over seeds) a target class of `images` distinct images gets at least one held-out image
    and at least `labelled` outside the held-out share: each image is held out with probability HELD_OUT,
    independently (tlpipe.data.splits)."""
    return sum(math.comb(images, held) * HELD_OUT**held * (1 - HELD_OUT) ** (images - held)
               for held in range(1, images - labelled + 1))


def images_needed(labelled: int) -> int:
    """The smallest class for which the split holds CERTAIN of the time with `labelled` images per class."""
    n = labelled + 1
    while split_holds(n, labelled) < CERTAIN:
        n += 1
    return n


def most_labels(images: int) -> int:
    """The largest target_labels_per_class that a class of `images` holds CERTAIN of the time (-1: none)."""
    k = -1
    while k + 1 < images and split_holds(images, k + 1) >= CERTAIN:
        k += 1
    return k


def target_problems(counts: dict[str, int], labelled: int) -> tuple[list[str], list[str]]:
    """The target classes that cannot be split with `labelled` images per class (refusals), and those that
    are split only for some seeds (warnings), one sentence each with advice that holds for all of them."""
    needed = images_needed(labelled)
    smallest = min(counts.values(), default=0)
    largest_k = most_labels(smallest)
    advice = (f"add images (with target_labels_per_class={labelled}, about {needed} per class hold for "
              f"{CERTAIN:.0%} of seeds)")
    if 0 <= largest_k < labelled:
        advice += f" or lower target_labels_per_class to {largest_k} or less"
    refused, warned = [], []
    for name, n in counts.items():
        if n < labelled + 1:
            refused.append(f"target class '{name}' has {n} image(s); target_labels_per_class={labelled} needs at least "
                           f"{labelled + 1} ({labelled} labelled and one held out for testing): {advice}.")
        elif (holds := split_holds(n, labelled)) < CERTAIN:
            warned.append(f"target class '{name}' has {n} images: the split by content leaves it without a held-out "
                          f"image or short of {labelled} labelled ones for about {1 - holds:.0%} of seeds; {advice}.")
    return refused, warned
