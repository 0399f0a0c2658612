"""Datasets: specs and built-in domains, validation, splits, dataset artifacts."""

from tlpipe.data.dataset import ImageSet, dataset_meta, load_dataset, save_dataset
from tlpipe.data.spec import check_spec, load_domain
from tlpipe.data.splits import split_source, split_target

__all__ = [
    "ImageSet",
    "check_spec",
    "dataset_meta",
    "load_dataset",
    "load_domain",
    "save_dataset",
    "split_source",
    "split_target",
]
