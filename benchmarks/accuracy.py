"""Accuracy of every transfer method on the built-in domain pairs, over several seeds; prints markdown tables.

    .venv/bin/python benchmarks/accuracy.py [--pairs digits:digits-m syn-digits:digits digits-m:digits]
                                            [--seeds 0 1 2] [--jobs 2] [--source-augment colour]
                                            [--out benchmarks/results/accuracy.md] [--units units.jsonl]
                                            [--strategies full ...] [--methods DANN MCC ...]
                                            [--backbone timm:resnet50 --pretrained-weights timm:resnet50.a1_in1k
                                             --image-size 224 --bottleneck 256 --backbone-lr 0.1]

Uses the library calls, splits and defaults of the transfer pipeline (without KFP and MLflow), and the
target-oracle upper bound: the same network trained on all target training images (labelled and
unlabelled) with their labels. Every figure is accuracy on the target test split, which no training or
choice has seen; "val" is the target validation split (10 images per class), the one the pipeline
chooses by. "selected on validation" is what the pipeline would register: per seed, the method with the
best validation accuracy among source-only, target-only, fine-tuned (`full`), DANN and DANN+finetune
(the first listed on ties), reported on the test split (only when all of them ran). With
--pretrained-weights, the source model, target-only and the oracle all start from those weights. "gap closed" is the share of the source-only ->
target-oracle gap a method closes: (method - source-only) / (oracle - source-only), on the means;
negative means negative transfer.
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np
import torch

from tlpipe import augment
from tlpipe.data import ImageSet, load_domain, split_source, split_target
from tlpipe.evaluate import score
from tlpipe.methods import adapt as adaptation
from tlpipe.methods.finetune import finetune
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, read_weights
from tlpipe.train import TrainConfig

PAIRS = ["digits:digits-m", "syn-digits:digits", "digits-m:digits"]
STRATEGIES = ["full", "freeze:2", "linear-probe", "l2sp:0.01"]
UNSUPERVISED = {"DANN": "dann", "CDAN+E": "cdan+e", "DAN": "dan", "Deep CORAL": "coral", "MCC": "mcc",
                "CDAN+MCC": "cdan+mcc", "FixMatch": "fixmatch", "AdaMatch": "adamatch", "SHOT": "shot"}
SEMI_SUPERVISED = "AdaMatch+labels"  # AdaMatch that also learns from the k labelled target images
# The models a default pipeline run scores: the selection picks among these, by validation accuracy.
PIPELINE_MODELS = ["source-only", "target-only", "finetune full", "DANN", "DANN+finetune"]
SELECTED = "selected on validation"


def run_unit(args, pair: str, seed: int) -> dict[str, tuple[float, float]]:
    """Every method on one domain pair and seed: (validation accuracy, test accuracy) on the target."""
    if args.jobs > 1:
        torch.set_num_threads(1)  # the units share the cores
    source_name, target_name = pair.split(":")
    source = load_domain(source_name, args.image_size, seed)
    target = load_domain(target_name, args.image_size, seed)
    with tempfile.TemporaryDirectory() as folders:
        if args.as_folders:  # read back as a user's image folders are, splits and `auto` included
            source, target = (load_domain(as_image_folder(data, Path(folders) / name), args.image_size, seed,
                                          Path(folders) / f"{name}-staging")
                              for data, name in ((source, "source"), (target, "target")))
        return _run_methods(args, pair, seed, source, target)


def as_image_folder(data: ImageSet, root: Path) -> str:
    """`data` written as an image folder (a folder per class, a PNG per image); its dataset spec."""
    from PIL import Image

    for name in data.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(np.asarray(data.images), data.labels)):
        Image.fromarray(image).save(root / data.classes[label] / f"{i:05d}.png")
    return f"imagefolder:{root}"


def _run_methods(args, pair: str, seed: int, source: ImageSet, target: ImageSet) -> dict[str, tuple[float, float]]:
    spec = "imagefolder:" if args.as_folders else pair
    source_augment = augment.resolve(args.source_augment, {"spec": spec, "shape": source.images.shape})
    target_augment = augment.resolve(args.target_augment, {"spec": spec, "shape": target.images.shape})
    source_train = split_source(source, seed)[0]
    parts = split_target(target, args.k, args.val, seed)
    labelled, unlabelled = parts.labelled, parts.unlabelled
    both = lambda model: (score(model, parts.val).accuracy, score(model, parts.test).accuracy)  # noqa: E731
    # Target augmentation applies where the labelled target images are trained on (fine-tuning,
    # target-only), as in the pipeline; source augmentation where source images are (pretraining,
    # adaptation) and to the oracle, whose training recipe is the source model's on target labels.
    config = lambda epochs: TrainConfig(epochs=epochs, batch_size=64, lr=0.01, seed=seed, augment=target_augment)  # noqa: E731
    source_config = lambda epochs: dataclasses.replace(config(epochs), augment=source_augment)  # noqa: E731
    weights = read_weights(args.pretrained_weights) if args.pretrained_weights else None
    new_model = lambda: Classifier(ModelSpec(args.backbone, source.classes, args.image_size), weights,  # noqa: E731
                                   args.pretrained_weights)
    torch.manual_seed(seed)
    source_model = new_model()
    pretrain(source_model, source_train, source_config(args.source_epochs))
    results = {"source-only": both(source_model)}
    results["target-only"] = both(finetune(source_model, labelled, "scratch", config(args.finetune_epochs),
                                           initial_weights=weights, initial_source=args.pretrained_weights))
    for strategy in args.strategies:
        results[f"finetune {strategy}"] = both(finetune(source_model, labelled, strategy, config(args.finetune_epochs)))
    adapted = {}
    adapt_config = lambda: dataclasses.replace(source_config(args.adapt_epochs), bottleneck=args.bottleneck,  # noqa: E731
                                               backbone_lr=args.backbone_lr)
    for name in args.methods:
        if name in UNSUPERVISED:
            adapted[name] = adaptation.adapt(UNSUPERVISED[name], source_model, source_train, unlabelled, adapt_config())
            results[name] = both(adapted[name])
    if SEMI_SUPERVISED in args.methods:
        results[SEMI_SUPERVISED] = both(adaptation.adapt("adamatch", source_model, source_train, unlabelled, adapt_config(),
                                                         labelled=labelled))
    if "DANN+finetune" in args.methods:
        # dann+finetune is DANN, then full fine-tuning on the k labels: the DANN model is its first half.
        dann = adapted.get("DANN") or adaptation.adapt("dann", source_model, source_train, unlabelled, adapt_config())
        results["DANN+finetune"] = both(finetune(dann, labelled, "full", config(args.finetune_epochs)))
    # Oracle: every target training image (labelled and unlabelled) with its true label.
    oracle_train = target.subset(np.flatnonzero(np.isin(target.ids, np.concatenate([labelled.ids, unlabelled.ids]))))
    torch.manual_seed(seed)
    oracle = new_model()
    pretrain(oracle, oracle_train, source_config(args.source_epochs))
    results["target oracle"] = both(oracle)
    if not all(m in results for m in PIPELINE_MODELS):
        print(f"done: {pair} seed {seed}", file=sys.stderr, flush=True)
        return results
    chosen = max(PIPELINE_MODELS, key=lambda m: results[m][0])
    results[SELECTED] = results[chosen]
    print(f"done: {pair} seed {seed} (validation chose {chosen})", file=sys.stderr, flush=True)
    return results


def pair_table(pair: str, seeds: list[int], per_seed: list[dict[str, float]]) -> tuple[str, dict[str, float]]:
    methods = list(per_seed[0])
    low = statistics.mean(r["source-only"][1] for r in per_seed)
    high = statistics.mean(r["target oracle"][1] for r in per_seed)
    lines = [f"### {pair.replace(':', ' -> ')}", "",
             "| method | " + " | ".join(f"test, seed {s}" for s in seeds) + " | test mean ± std | val mean | gap closed |",
             "|---" * (len(seeds) + 4) + "|"]
    closed = {}
    for method in methods:
        tests = [r[method][1] for r in per_seed]
        mean = statistics.mean(tests)
        std = statistics.stdev(tests) if len(tests) > 1 else 0.0
        closed[method] = (mean - low) / (high - low) if high != low else 0.0
        cells = " | ".join(f"{v:.1%}" for v in tests)
        val = statistics.mean(r[method][0] for r in per_seed)
        lines.append(f"| {method} | {cells} | {mean:.1%} ± {std:.1%} | {val:.1%} | {closed[method]:+.0%} |")
    return "\n".join(lines), closed


def _finished(path: str | None, units: list) -> dict:
    """The units of `units` that the --units file holds, with their results."""
    if not path or not os.path.exists(path):
        return {}
    rows = [json.loads(line) for line in open(path) if line.strip()]
    found = {(r["pair"], r["seed"]): {m: tuple(v) for m, v in r["results"].items()} for r in rows}
    return {u: found[u] for u in units if u in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=PAIRS, metavar="SOURCE:TARGET")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=10, help="target labels per class")
    parser.add_argument("--val", type=int, default=10, help="target validation images per class")
    parser.add_argument("--backbone", default="small-cnn", help="small-cnn, a torchvision name or timm:<model>")
    parser.add_argument("--pretrained-weights", default="", help="as the pipeline's pretrained_weights (a file, s3://, "
                                                                 "a torchvision enum, hf-hub:<repo>, timm:<model>.<tag>)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES, help="fine-tuning rows (default: %(default)s)")
    parser.add_argument("--methods", nargs="*", default=[*UNSUPERVISED, SEMI_SUPERVISED, "DANN+finetune"],
                        help="adaptation rows (default: %(default)s)")
    parser.add_argument("--bottleneck", type=int, default=0, help="adaptation's bottleneck width (0: none)")
    parser.add_argument("--backbone-lr", type=float, default=1.0, help="adaptation's backbone rate as a fraction of lr")
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--adapt-epochs", type=int, default=120)
    parser.add_argument("--source-augment", default="none",
                        help="augmentation of the source images in pretraining and adaptation (and of the oracle's): "
                             "a tlpipe.augment name, or auto as the pipeline resolves it")
    parser.add_argument("--target-augment", default="none",
                        help="augmentation of the labelled target images in fine-tuning and target-only")
    parser.add_argument("--as-folders", action="store_true",
                        help="write both domains as image folders and read them back through imagefolder:, the "
                             "path (and the `auto` augmentation) of a user's own images")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="units (pair, seed) run side by side")
    parser.add_argument("--out", help="also write the tables, command, machine and date to this markdown file")
    parser.add_argument("--units", help="a JSON-lines file of finished units (pair, seed): each is added as it "
                                        "finishes, and a unit found there is not run again, so an interrupted "
                                        "benchmark goes on where it stopped")
    args = parser.parse_args()

    started = time.time()
    units = [(pair, seed) for pair in args.pairs for seed in args.seeds]
    by_unit = _finished(args.units, units)
    todo = [u for u in units if u not in by_unit]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        running = {pool.submit(run_unit, args, pair, seed): (pair, seed) for pair, seed in todo}
        for done in as_completed(running):
            by_unit[running[done]] = done.result()
            if args.units:
                with open(args.units, "a") as f:
                    pair, seed = running[done]
                    f.write(json.dumps({"pair": pair, "seed": seed, "results": by_unit[running[done]]}) + "\n")
    tables, summary = [], {}
    for pair in args.pairs:
        table, summary[pair] = pair_table(pair, args.seeds, [by_unit[(pair, s)] for s in args.seeds])
        tables.append(table)
    methods = list(by_unit[units[0]])
    lines = ["### Share of the source-only -> oracle gap closed", "",
             "| method | " + " | ".join(p.replace(":", " -> ") for p in args.pairs) + " |",
             "|---" * (len(args.pairs) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{summary[p][m]:+.0%}" for p in args.pairs) + " |" for m in methods]
    seconds = time.time() - started
    body = "\n\n".join(tables + ["\n".join(lines)])
    print(body)
    print(f"\n{seconds:.0f} s in all, {args.jobs} jobs")
    if args.out:
        command = "benchmarks/accuracy.py " + " ".join(sys.argv[1:])
        machine = (f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}")
        header = (f"# Accuracy benchmark\n\nCommand: `.venv/bin/python {command}`  \n"
                  f"Settings: k={args.k} labels and {args.val} validation images per class, {args.backbone} "
                  f"({args.pretrained_weights or 'random start'}, {args.image_size} px), adaptation bottleneck "
                  f"{args.bottleneck} and backbone rate x{args.backbone_lr}, epochs source/finetune/adapt "
                  f"{args.source_epochs}/{args.finetune_epochs}/{args.adapt_epochs}, source/target augmentation {args.source_augment}/{args.target_augment}"
                  f"{', domains read as image folders' if args.as_folders else ''}, "
                  f"seeds {args.seeds}  \n"
                  f"Machine: {machine}  \nDate: {time.strftime('%Y-%m-%d', time.gmtime())}  \n"
                  f"Wall time: {seconds:.0f} s with {args.jobs} jobs\n\n")
        with open(args.out, "w") as f:
            f.write(header + body + "\n")


if __name__ == "__main__":
    main()
