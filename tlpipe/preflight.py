"""Before a pipeline runs (locally, or submitted to a cluster): its NAME=VALUE parameters cast to their
types, their values checked, and what is cheap to check now and expensive after training started
(data, weights, buckets, the tracking server)."""

import functools
import json
import sys
from pathlib import Path

import torch

from tlpipe import augment, selection, storage, tracking
from tlpipe.cluster import check_cluster_checkpoint_root
from tlpipe.data import census, check_spec
from tlpipe.data.files import check_location, location_of
from tlpipe.data.spec import BUILTIN, spec_location
from tlpipe.errors import TlpipeError, did_you_mean
from tlpipe.methods import adapt as adaptation
from tlpipe.methods.finetune import parse_strategy, uses_source
from tlpipe.models import Classifier, ModelSpec
from tlpipe.models.backbones import check_backbone
from tlpipe.models.weights import hub_file, is_hub_name
from tlpipe.registry import Gate
from tlpipe.registry.champion import (champion_classes, check_source_model_classes, registered_version,
                                     version_classes)


def _json_list(value: str) -> list:
    parsed = json.loads(value)
    if not isinstance(parsed, list):
        raise ValueError(value)
    return parsed


_CASTS = {"Integer": int, "Float": float, "String": str, "Boolean": lambda v: v.lower() in ("1", "true", "yes"),
          "List": _json_list}


def parse_params(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE strings (the command line's -p) as a dict of strings."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise TlpipeError(f"parameter '{pair}' is not NAME=VALUE (e.g. -p source_epochs=5).")
        params[name] = value
    return params


def parameters(pipeline) -> list[dict]:
    """The pipeline's parameters as its compiled interface has them: name, type, default, meaning."""
    return [{"name": name, "type": spec.type.lower(), "default": spec.default, "meaning": spec.description or ""}
            for name, spec in pipeline.component_spec.inputs.items()]


def format_parameters(pipeline) -> str:
    """The parameters as a table for the terminal, each meaning wrapped under its name."""
    import textwrap

    lines = [f"{pipeline.name}: {pipeline.description}", ""]
    for p in parameters(pipeline):
        lines.append(f"  {p['name']} ({p['type']}, default {json.dumps(p['default'])})")
        lines += textwrap.wrap(p["meaning"], 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def pipeline_arguments(pipeline, given: dict[str, str]) -> dict:
    """Casts NAME=VALUE strings to the pipeline's parameter types; unknown names are an error."""
    inputs = pipeline.component_spec.inputs
    arguments = {}
    for name, value in given.items():
        if name not in inputs:
            raise TlpipeError(f"pipeline {pipeline.name} has no parameter '{name}';{did_you_mean(name, inputs)} its parameters are "
                              f"{', '.join(inputs)} (`tlpipe params` describes them).")
        kind = inputs[name].type
        try:
            arguments[name] = _CASTS.get(kind, str)(value)
        except ValueError:  # json.JSONDecodeError is one
            example = " (JSON, e.g. [0,1,2])" if kind == "List" else ""
            raise TlpipeError(f"parameter {name}={value!r} is not a valid {kind.lower()}{example}.") from None
    return arguments


PATHS = ("publish_to", "checkpoint_root", "attributes")  # a folder or file, or an s3:// URI
NAMED = ("pretrained_weights",)  # also a hub or torchvision name
SPECS = ("source", "target", "images")  # data specs: imagefolder:<location>, torchvision:<Name>:<root>, a name


def _absolute(location: str) -> str:
    if not location or "://" in location:
        return location
    return str(Path(location).expanduser().resolve())


def absolute_locations(arguments: dict) -> dict:
    """The run's arguments with relative local paths made absolute, as the MLflow runs, the registry's lineage
    and the steps record them: `imagefolder:data/source` names a folder only from where it was typed.
    (Not for a cluster run: its paths are the pods'.)"""
    absolute = dict(arguments)
    for name in PATHS:
        if isinstance(absolute.get(name), str):
            absolute[name] = _absolute(absolute[name])
    for name in NAMED:  # a file only where one is
        value = absolute.get(name)
        if isinstance(value, str) and value and not is_hub_name(value) and Path(value).expanduser().is_file():
            absolute[name] = _absolute(value)
    for name in SPECS:
        spec = absolute.get(name)
        if isinstance(spec, str) and spec.startswith("imagefolder:"):
            absolute[name] = "imagefolder:" + _absolute(spec.removeprefix("imagefolder:"))
        elif isinstance(spec, str) and spec.startswith("torchvision:") and spec.count(":") >= 2:
            kind, dataset, root = spec.split(":", 2)
            absolute[name] = f"{kind}:{dataset}:{_absolute(root)}"
    return absolute


def preflight(arguments: dict, defaults: dict, on_cluster: bool = False) -> list[str]:
    """Checks that are cheap now and expensive to find out after training started.

    `on_cluster` (tlpipe submit and schedule): the data and services are the cluster's. Parameters are
    checked all the same; S3 locations are checked when this machine has S3 credentials; paths and the
    tracking server, which the pods see and this machine may not, are not. Returns what was not checked.
    """
    values = {**defaults, **arguments}
    problems: list[str] = []

    def checked(check, *args):
        """Runs one check, noting its refusal in `problems` so that every problem is found in one go."""
        try:
            return check(*args)
        except TlpipeError as error:
            problems.append(str(error))
            return None

    checked(check_parameters, values)
    if on_cluster and "checkpoint_root" in values:
        checked(check_cluster_checkpoint_root, values["checkpoint_root"])
    skipped = []
    s3 = not on_cluster or storage.has_credentials()

    def reachable(name: str, location: str) -> bool:
        """Whether `location` can be checked from here; notes it in `skipped` if not."""
        if not on_cluster:
            return True
        if storage.is_s3(location):
            if not s3:
                skipped.append(f"{name} {location} (no S3 credentials here)")
            return s3
        skipped.append(f"{name} {location} (a path the pods read)")
        return False

    counts = {}
    for key in ("source", "target"):
        if key in values:
            location = checked(spec_location, values[key])
            if location is not None:
                counts[key] = checked(check_spec, values[key], not location or reachable(key, location))
    if "images" in values:  # predict: the folder, or the bucket of the prefix (the step lists it)
        location = checked(location_of, values["images"])
        if location and reachable("images", location):
            checked(check_location, location)
    refused, warnings = _census_problems(counts, values)
    problems += refused
    weights = values.get("pretrained_weights")
    if weights and is_hub_name(weights):
        if on_cluster:
            skipped.append(f"pretrained_weights {weights} (the pods download it, or find it in their cache)")
        else:
            checked(hub_file, weights)  # downloaded into its cache now (or found there), or one sentence on why not
    elif weights and reachable("pretrained_weights", weights):
        if storage.is_s3(weights):
            checked(storage.check_bucket, weights)
        elif not Path(weights).is_file():
            problems.append(f"pretrained weights file {weights} does not exist.")
    for key in ("publish_to", "checkpoint_root"):
        if storage.is_s3(values.get(key, "")) and reachable(key, values[key]):
            checked(storage.check_bucket, values[key])
    if on_cluster:
        skipped.append("the MLflow tracking server (the pods reach it through the cluster's Secret)")
    else:
        try:
            tracking.check_reachable()
        except TlpipeError as error:
            problems.append(str(error))
        else:
            checked(_check_champion, values, counts.get("source") or counts.get("target"))
            if "source_model" in values:  # source-free: the model that stands for the source
                checked(_check_source_model, values["source_model"], counts.get("target"))
            if "model" in values:  # predict: the registered model it names
                checked(registered_version, values["model"])
    problems = list(dict.fromkeys(problems))  # an unreachable bucket read by both domains is one problem
    if problems:
        raise TlpipeError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} problems, found before anything ran:\n  - " + "\n  - ".join(problems))
    for warning in warnings:
        print(f"tlpipe: warning: {warning}", file=sys.stderr, flush=True)
    return skipped


def _census_problems(counts: dict[str, dict[str, int] | None], values: dict) -> tuple[list[str], list[str]]:
    """The image folders' classes and per-class counts (from their listings) against what ingest needs:
    the same classes in both domains, images in every class, target classes that the split by content can
    cut into k labelled and held-out images. The refusals and the warnings, one sentence each."""
    source, target = counts.get("source"), counts.get("target")
    refused = []
    for name, domain in (("source", source), ("target", target)):
        empty = [c for c, n in (domain or {}).items() if n == 0]
        if empty:
            refused.append(f"{name} classes {', '.join(map(repr, empty))} have no images; add PNG or JPEG files or "
                           "remove their folders.")
    if source and target and list(source) != list(target):
        only_source, only_target = sorted(set(source) - set(target)), sorted(set(target) - set(source))
        refused.append(f"source and target classes differ: only in source {only_source}, only in target {only_target}; "
                       "both domains need the same class folders.")
    warnings = []
    labelled = values.get("target_labels_per_class")
    if target and isinstance(labelled, int) and labelled >= 0:
        sized = {c: n for c, n in target.items() if n > 0}
        too_small, uncertain = census.target_problems(sized, labelled)
        refused += too_small
        warnings += uncertain
    return refused, warnings


def _check_champion(values: dict, source: dict[str, int] | None) -> None:
    """A champion registered under model_name that predicts other classes than the source data's: the
    run would train, then fail to register (or to start retraining from it)."""
    if not values.get("model_name") or not source:
        return
    found = champion_classes(values["model_name"])
    if found and found[1] != list(source):
        version, classes = found
        raise TlpipeError(f"the champion of '{values['model_name']}' (version {version}) predicts classes {classes}, the "
                          f"source data has {list(source)}; give another model_name (e.g. -p model_name=<new name>) or "
                          "the champion's classes.")


def _check_source_model(uri: str, target: dict[str, int] | None) -> None:
    """The registered model a source-free run adapts: that it exists, and (for an image folder) that it
    predicts the target's classes."""
    name, version = registered_version(uri)
    if target:
        check_source_model_classes(uri, name, version, version_classes(name, version), list(target))


# The least value each number may take: a count of epochs or a batch of 0 trains nothing (or divides by
# zero) and would register an untrained model as if trained.
AT_LEAST = {"source_epochs": 1, "finetune_epochs": 1, "adapt_epochs": 1, "batch_size": 1, "checkpoint_every": 1,
            "target_labels_per_class": 0, "target_val_per_class": 0, "nproc": 0, "seed": 0, "image_size": 8}


def check_parameters(values: dict) -> None:
    """The checks of parameter values alone, wherever the pipeline will run."""
    for name, least in AT_LEAST.items():
        if name in values and values[name] < least:
            raise TlpipeError(f"{name} must be {least} or more, got {values[name]}.")
    if "lr" in values and not values["lr"] > 0:
        raise TlpipeError(f"lr must be more than 0, got {values['lr']}.")
    if "source_model" in values:  # source-free: nothing may need the source images
        if "strategy" in values and uses_source(values["strategy"]):
            raise TlpipeError(f"strategy {values['strategy']} also trains on source images, which a source-free run "
                              "does not have; use full, freeze:<k>, linear-probe or l2sp:<alpha>.")
        if values.get("select_by") == "source-val":
            raise TlpipeError("select_by source-val needs source validation images, which a source-free run does not "
                              "have; use target-val, im or snd.")
    if "strategy" in values:
        name, _ = parse_strategy(values["strategy"])
        builtin = values.get("source") in BUILTIN
        if name == "zero-shot" and not values.get("attributes") and not builtin:
            raise TlpipeError("zero-shot strategies need an attribute table for these classes: set -p attributes=<file.csv> "
                              "(class,<attribute>,...).")
    if "backbone" in values:
        check_backbone(values["backbone"])
        _backbone_blocks(values["backbone"], values.get("image_size", 32))
        if "strategy" in values:
            _check_strategy_blocks(values["strategy"], values["backbone"], values.get("image_size", 32))
    recipe = [values.get(name, 0) for name in ("adapt_bottleneck", "adapt_backbone_lr")]
    if any(value < 0 and value != adaptation.AUTO for value in recipe) or values.get("sdat_rho", 1.0) <= 0:
        raise TlpipeError("adapt_bottleneck and adapt_backbone_lr must be 0 or more (or -1: the recipe for how the "
                          "backbone started), and sdat_rho more than 0.")
    if "blocks" in values:
        _check_blocks(values["blocks"], values.get("backbone", "small-cnn"), values.get("image_size", 32))
    if values.get("adapt_method") not in (None, *adaptation.METHODS):
        raise TlpipeError(f"unknown adaptation method '{values['adapt_method']}';"
                          f"{did_you_mean(values['adapt_method'], adaptation.METHODS)} use {', '.join(adaptation.METHODS)}.")
    for name in ("source_augment", "target_augment"):
        if name in values:
            augment.check(values[name])
    if "select_by" in values:
        selection.resolve(values["select_by"], values.get("target_val_per_class", 0))
    if "gate_alpha" in values:
        Gate(values["gate_alpha"], values.get("gate_margin", 0.0), values.get("min_accuracy", 0.0))


def _takes(backbone: str, size: int) -> int | None:
    """The number of blocks of `backbone` if a classifier on it takes one size x size image, else None."""
    try:
        model = Classifier(ModelSpec(backbone, ["a", "b"], size)).eval()
        with torch.no_grad():
            model(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    except (RuntimeError, TlpipeError):  # kernels larger than the feature map, an empty patch grid, ...
        return None
    return len(model.blocks)


@functools.lru_cache(maxsize=8)
def _backbone_blocks(backbone: str, image_size: int) -> int:
    """The backbone's number of blocks, once a classifier on it has taken an image_size image; otherwise one
    sentence with the smallest size it takes (found by bisection), before training fails on its first batch."""
    image_size = int(image_size)  # a compiled pipeline's defaults come back as floats
    blocks = _takes(backbone, image_size)
    if blocks is not None:
        return blocks
    works = next((s for s in (16, 32, 64, 128, 224, 384, 512) if s > image_size and _takes(backbone, s)), None)
    if works is None:
        raise TlpipeError(f"the {backbone} backbone does not take {image_size} px images; set image_size to a size it does.")
    fails = image_size
    while works - fails > 1:
        middle = (works + fails) // 2
        works, fails = (middle, fails) if _takes(backbone, middle) else (works, middle)
    raise TlpipeError(f"the {backbone} backbone needs images of at least {works} px, and image_size is {image_size}; "
                      f"set -p image_size={works} or more.")


def _check_strategy_blocks(strategy: str, backbone: str, image_size: int) -> None:
    """freeze:k, copy:k and copy+:k within the backbone's blocks: freeze:99 would freeze every block and
    train the head alone, a linear probe under another name."""
    name, k = parse_strategy(strategy)
    if name in ("freeze", "copy", "copy+"):
        n = _backbone_blocks(backbone, image_size)
        if k > n:
            raise TlpipeError(f"strategy={strategy}: the {backbone} backbone has {n} blocks; give {name}:0 to {name}:{n}.")


def _check_blocks(blocks: list, backbone: str, image_size: int) -> None:
    """The layer sweep's k values: whole numbers from 0 to the backbone's number of blocks."""
    n = _backbone_blocks(backbone, image_size)
    if not blocks or any(not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n for k in blocks):
        raise TlpipeError(f"blocks={json.dumps(blocks)}: give whole numbers from 0 to {n}, the number of blocks of the "
                          f"{backbone} backbone, e.g. [0, 1, 2].")
