"""Splits decided by each image's stable identity and the seed, never by the data's order or size.

Every image has an identity (`ImageSet.ids`: the hash of its pixels, or of its glyph for the built-in
digit domains) and from it and the seed a position u in [0, 1). One layout of u holds in every domain:

    u < 0.2          source test        target held-out: validation (the first v per class by u), test
    0.2 <= u < 0.3   source validation
    u >= 0.3         source train       target training: labelled (the first k per class by u), unlabelled

So an image, its glyph, or an exact duplicate of it is held out in both domains or in neither: nothing in
source_train is ever in the target's validation or test split. An image never crosses the 0.3 line as
the data grows or shrinks, and the test splits of the source never change but by the images added or
removed. The exact per-class counts (k labelled, v validation: distinct images, every copy of one on the
same side) come from the order by u: adding an image can move another from validation to target test
or from labelled to unlabelled, never between training and held-out data.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from tlpipe.data.dataset import ImageSet
from tlpipe.errors import TlpipeError

SOURCE_TEST = 0.2  # u below this: source test
HELD_OUT = 0.3  # u below this: held out in every domain (source validation and test; target validation and test)


def positions(ids: np.ndarray, seed: int) -> np.ndarray:
    """Each identity's position in [0, 1) for this seed: the same in every domain and on every machine."""
    key = int(seed).to_bytes(8, "little", signed=True)
    return np.array([int.from_bytes(hashlib.blake2b(int(i).to_bytes(8, "little"), digest_size=8, key=key).digest(),
                                    "little") / 2**64 for i in ids], dtype=np.float64)


def _by_class(data: ImageSet, seed: int):
    """For each class, its images' indices sorted by position, and their positions."""
    u = positions(data.ids, seed)
    for label, name in enumerate(data.classes):
        index = np.flatnonzero(data.labels == label)
        index = index[np.argsort(u[index], kind="stable")]
        yield name, index, u[index]


def _cut(ids: np.ndarray, k: int) -> int:
    """Where the first k distinct identities of `ids` (sorted by position, so that the copies of one
    image are neighbours) end: every copy of an image falls on the same side of the cut."""
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return int(starts[k]) if k < len(starts) else len(ids)


def _distinct(ids: np.ndarray) -> int:
    return len(np.unique(ids))


def _take(data: ImageSet, parts: list[np.ndarray]) -> ImageSet:
    return data.subset(np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64))


def split_source(data: ImageSet, seed: int, unseen: frozenset = frozenset()) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Source train, validation and test. Classes in `unseen` appear only in the test split (zero-shot)."""
    train, val, test = [], [], []
    for name, index, u in _by_class(data, seed):
        test.append(index[u < SOURCE_TEST])
        if name in unseen:
            continue
        val.append(index[(u >= SOURCE_TEST) & (u < HELD_OUT)])
        train.append(index[u >= HELD_OUT])
        if not len(train[-1]):
            raise TlpipeError(f"source class '{name}' has {len(index)} image(s) and none fell in the training "
                              f"{1 - HELD_OUT:.0%} (chosen by each image's content and the seed); add images to it.")
    return _take(data, train), _take(data, val), _take(data, test)


@dataclass
class TargetSplits:
    labelled: ImageSet
    val: ImageSet
    unlabelled: ImageSet  # labels removed
    test: ImageSet
    val_short: list[str]  # classes that got fewer than the asked validation images


def split_target(data: ImageSet, labels_per_class: int, val_per_class: int, seed: int,
                 unseen: frozenset = frozenset()) -> TargetSplits:
    """Target labelled (k per class), validation (v per class, at most half of a class's held-out images),
    unlabelled and test. Classes in `unseen` appear only in the test split (zero-shot)."""
    if labels_per_class < 0:
        raise TlpipeError(f"target_labels_per_class must be 0 or more, got {labels_per_class}.")
    if val_per_class < 0:
        raise TlpipeError(f"target_val_per_class must be 0 or more, got {val_per_class}.")
    labelled, val, unlabelled, test, short = [], [], [], [], []
    for name, index, u in _by_class(data, seed):
        held, pool = index[u < HELD_OUT], index[u >= HELD_OUT]
        if not len(held):
            raise TlpipeError(f"target class '{name}' has {len(index)} image(s) and none fell in the held-out "
                              f"{HELD_OUT:.0%} (chosen by each image's content and the seed), so it cannot be tested; "
                              "add images to it.")
        if name in unseen:
            test.append(held)
            continue
        # Counted in distinct images: exact copies share a position, and one copy in validation with
        # another in test would let the choice of model see a test image.
        v = min(val_per_class, _distinct(data.ids[held]) // 2)  # at least half stay for testing
        if v < val_per_class:
            short.append(name)
        cut = _cut(data.ids[held], v)
        val.append(held[:cut])
        test.append(held[cut:])
        if _distinct(data.ids[pool]) < labels_per_class:
            raise TlpipeError(
                f"target class '{name}' has {_distinct(data.ids[pool])} image(s) outside the held-out {HELD_OUT:.0%}, "
                f"fewer than target_labels_per_class={labels_per_class} (exact copies count once); lower "
                "target_labels_per_class or add images."
            )
        cut = _cut(data.ids[pool], labels_per_class)
        labelled.append(pool[:cut])
        unlabelled.append(pool[cut:])
    splits = TargetSplits(_take(data, labelled), _take(data, val), _take(data, unlabelled).without_labels(),
                          _take(data, test), short)
    if len(splits.unlabelled) == 0:
        raise TlpipeError("the unlabelled target split is empty: every target training image went to the labelled "
                          "split; lower target_labels_per_class.")
    return splits


def shared_with_source(source: ImageSet, held_out_ids: np.ndarray, source_train: ImageSet) -> int:
    """How many held-out target images have an exact duplicate (for built-in domains: their glyph) in
    the source. The layout puts those in the source's held-out splits; this checks that it did."""
    leaked = np.isin(held_out_ids, source_train.ids)
    if leaked.any():
        raise RuntimeError(f"{int(leaked.sum())} held-out target images share an identity with source_train")
    return int(np.isin(held_out_ids, source.ids).sum())
