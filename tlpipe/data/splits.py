"""Seeded, stratified, disjoint splits of the source and target domains."""

import numpy as np

from tlpipe.data.dataset import ImageSet
from tlpipe.errors import TlpipeError


def _test_count(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def _shuffled_per_class(data: ImageSet, seed: int):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(data.classes):
        yield name, rng.permutation(np.flatnonzero(data.labels == label))


def split_source(data: ImageSet, test_fraction: float, seed: int, unseen: frozenset = frozenset()) -> tuple[ImageSet, ImageSet]:
    """Source train/test, stratified by class; classes in `unseen` are left out of train (zero-shot)."""
    train, test = [], []
    for name, index in _shuffled_per_class(data, seed):
        n_test = _test_count(len(index), test_fraction)
        if len(index) - n_test < 1:
            raise TlpipeError(f"source class '{name}' has {len(index)} image(s); it needs at least 2 (train and test).")
        test.append(index[:n_test])
        train.append(index[n_test:] if name not in unseen else index[:0])
    return data.subset(np.sort(np.concatenate(train))), data.subset(np.sort(np.concatenate(test)))


def split_target(data: ImageSet, labels_per_class: int, test_fraction: float, seed: int, unseen: frozenset = frozenset()):
    """Target labelled (k per class), unlabelled (labels removed) and test, stratified by class.
    Classes in `unseen` appear only in the test split (zero-shot)."""
    if labels_per_class < 0:
        raise TlpipeError(f"target_labels_per_class must be 0 or more, got {labels_per_class}.")
    labelled, unlabelled, test = [], [], []
    for name, index in _shuffled_per_class(data, seed + 1):
        n_test = _test_count(len(index), test_fraction)
        if len(index) - n_test < labels_per_class:
            raise TlpipeError(
                f"target class '{name}' has {len(index)} image(s): target_labels_per_class={labels_per_class} "
                f"plus {n_test} held out for testing needs {labels_per_class + n_test}; lower target_labels_per_class."
            )
        test.append(index[:n_test])
        if name in unseen:
            continue
        labelled.append(index[n_test : n_test + labels_per_class])
        unlabelled.append(index[n_test + labels_per_class :])
    parts = [np.sort(np.concatenate(p)).astype(np.int64) for p in (labelled, unlabelled, test)]
    if len(parts[1]) == 0:
        raise TlpipeError("the unlabelled target split is empty: every target image went to the labelled or test split.")
    return data.subset(parts[0]), data.subset(parts[1]).without_labels(), data.subset(parts[2])
