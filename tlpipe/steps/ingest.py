"""The ingest step: both domains loaded, checked against each other, split and written as datasets."""

import tempfile

import mlflow
import numpy as np

from tlpipe import tracking
from tlpipe.data import load_domain, save_dataset, split_source, split_target
from tlpipe.data.attributes import DIGITS, signatures
from tlpipe.data.splits import shared_with_source
from tlpipe.errors import TlpipeError
from tlpipe.steps.common import publish, timed


@timed
def ingest(
    source: str,
    target: str,
    target_labels_per_class: int,
    seed: int,
    image_size: int,
    out: dict[str, str],
    experiment: str,
    pipeline_run: str,
    publish_to: str = "",
    unseen_classes: str = "",
    attributes: str = "",
    target_val_per_class: int = 10,
    data_version: str = "",
) -> dict[str, dict]:
    """Loads both domains, checks they agree, and writes the seven split datasets (SPLITS) to `out[name]`.
    With no `source` (the source-free pipeline: a model stands for the source domain) the source splits
    are written empty, with the target's classes.

    Splits follow each image's stable identity (tlpipe.data.splits): no source training image, glyph or
    exact duplicate is in the target's validation or test split. `unseen_classes` (comma-separated)
    appear only in the test splits: zero-shot training never sees them. The class attribute table
    (`attributes`, or the built-in one for digits) travels in every split's metadata.
    """
    params = {"source": source, "target": target, "target_labels_per_class": target_labels_per_class,
              "target_val_per_class": target_val_per_class, "seed": seed, "image_size": image_size,
              "unseen_classes": unseen_classes, "attributes": attributes, "data_version": data_version}
    if image_size < 8:
        raise TlpipeError(f"image_size must be at least 8 pixels, got {image_size}.")
    # Image folders are staged as shards here and copied into the split artifacts, never held in memory.
    with tempfile.TemporaryDirectory(prefix="tlpipe-ingest-") as work:
        target_data = load_domain(target, image_size, seed, work)
        source_data = load_domain(source, image_size, seed, work) if source else target_data.subset(np.arange(0))
        if source_data.classes != target_data.classes:
            only_source = sorted(set(source_data.classes) - set(target_data.classes))
            only_target = sorted(set(target_data.classes) - set(source_data.classes))
            raise TlpipeError(
                f"source and target classes differ: only in source {only_source}, only in target {only_target}; "
                "both domains need the same class folders."
            )
        unseen = _unseen(unseen_classes, source_data.classes)
        table = {}
        if attributes or unseen or sorted(source_data.classes) == sorted(DIGITS):
            table = signatures(source_data.classes, attributes)
        if source:
            source_train, source_val, source_test = split_source(source_data, seed, unseen)
        else:
            source_train = source_val = source_test = source_data
        parts = split_target(target_data, target_labels_per_class, target_val_per_class, seed, unseen)
        if parts.val_short:
            print(f"tlpipe: note: target_val_per_class={target_val_per_class}: classes {', '.join(parts.val_short)} have fewer held-out "
                  "images, so half of those validate and half test", flush=True)
        shared = shared_with_source(source_data, np.concatenate([parts.val.ids, parts.test.ids]), source_train)
        if shared:
            print(f"tlpipe: note: {shared} of the {len(parts.val) + len(parts.test)} target validation and test images are exact "
                  "duplicates of source images (for built-in domains: drawn from the same glyph); all are held out of "
                  "source_train", flush=True)
        splits = {"source_train": (source, source_train), "source_val": (source, source_val),
                  "source_test": (source, source_test), "target_labelled": (target, parts.labelled),
                  "target_val": (target, parts.val), "target_unlabelled": (target, parts.unlabelled),
                  "target_test": (target, parts.test)}
        facts = {name: save_dataset(out[name], data, spec=spec, split=name, seed=seed, unseen=sorted(unseen), attributes=table)
                 for name, (spec, data) in splits.items()}
    if publish_to:
        for name in splits:
            facts[name]["published"] = publish(out[name], publish_to, pipeline_run, f"datasets/{name}")
    summary = {k: params[k] for k in ("source", "target", "seed", "target_labels_per_class", "target_val_per_class",
                                       "image_size")}
    with tracking.step_run("ingest", experiment, pipeline_run, params, shared=summary) as run:
        mlflow.log_metrics({f"{name}_count": meta["count"] for name, meta in facts.items()})
        mlflow.log_metric("target_held_out_shared_with_source", shared)
        mlflow.set_tags({f"tlpipe.hash.{name}": meta["content_hash"] for name, meta in facts.items()})
        splits = [tracking.log_split(meta, out[name], context=name) for name, meta in facts.items()
                  if source or not name.startswith("source")]  # source-free: the empty source splits are no input
        tracking.log_splits_to_parent(tracking.parent_of(run), splits)
    return facts


def _unseen(text: str, classes: list[str]) -> frozenset:
    unseen = frozenset(c.strip() for c in text.split(",") if c.strip())
    unknown = sorted(unseen - set(classes))
    if unknown:
        raise TlpipeError(f"unseen_classes {unknown} are not classes of the data ({', '.join(classes)}).")
    if len(unseen) >= len(classes) - 1:
        raise TlpipeError("unseen_classes must leave at least two classes seen in training.")
    return unseen
