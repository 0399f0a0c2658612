"""Accuracy of every transfer method on a domain pair, over several seeds; prints a markdown table.

    .venv/bin/python benchmarks/accuracy.py [--source digits] [--target digits-m] [--seeds 0 1 2]

Uses the same library calls and defaults as the transfer pipeline (without KFP and MLflow), and the
target-oracle upper bound: the same network trained on all labelled target training images.
"""

import argparse
import statistics
import time

import torch

from tlpipe.data import load_domain, split_source, split_target
from tlpipe.evaluate import score
from tlpipe.methods import dann
from tlpipe.methods.finetune import finetune
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.steps import SOURCE_TEST_FRACTION, TARGET_TEST_FRACTION
from tlpipe.train import TrainConfig

STRATEGIES = ["full", "freeze:2", "linear-probe", "l2sp:0.01"]


def run_seed(args, seed: int) -> dict[str, float]:
    source = load_domain(args.source, 32, seed)
    target = load_domain(args.target, 32, seed)
    source_train, _ = split_source(source, SOURCE_TEST_FRACTION, seed)
    labelled, unlabelled, test = split_target(target, args.k, TARGET_TEST_FRACTION, seed)
    config = lambda epochs: TrainConfig(epochs=epochs, batch_size=64, lr=0.01, seed=seed)  # noqa: E731
    torch.manual_seed(seed)
    source_model = Classifier(ModelSpec(args.backbone, source.classes, 32))
    pretrain(source_model, source_train, config(args.source_epochs))
    results = {"source-only": score(source_model, test).accuracy}
    results["target-only"] = score(finetune(source_model, labelled, "scratch", config(args.finetune_epochs)), test).accuracy
    for strategy in STRATEGIES:
        tuned = finetune(source_model, labelled, strategy, config(args.finetune_epochs))
        results[f"finetune {strategy}"] = score(tuned, test).accuracy
    results["DANN"] = score(dann.adapt(source_model, source_train, unlabelled, config(args.adapt_epochs)), test).accuracy
    # Oracle: all target training images with their true labels (the unlabelled split's labels restored).
    oracle_train = target.subset([i for i in range(len(target)) if not _in(target.images[i], test.images)])
    torch.manual_seed(seed)
    oracle = Classifier(ModelSpec(args.backbone, source.classes, 32))
    pretrain(oracle, oracle_train, config(args.source_epochs))
    results["target oracle"] = score(oracle, test).accuracy
    return results


def _in(image, images) -> bool:
    return bool((images == image).all(axis=(1, 2, 3)).any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="digits")
    parser.add_argument("--target", default="digits-m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=10, help="target labels per class")
    parser.add_argument("--backbone", default="small-cnn")
    parser.add_argument("--source-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--adapt-epochs", type=int, default=120)
    args = parser.parse_args()

    started = time.time()
    per_seed = [run_seed(args, seed) for seed in args.seeds]
    methods = list(per_seed[0])
    low = statistics.mean(r["source-only"] for r in per_seed)
    high = statistics.mean(r["target oracle"] for r in per_seed)
    print(f"{args.source} -> {args.target}, k={args.k}, {args.backbone}, seeds {args.seeds}")
    print()
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std | gap closed |")
    print("|---" * (len(args.seeds) + 3) + "|")
    for method in methods:
        values = [r[method] for r in per_seed]
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        closed = (mean - low) / (high - low) if high != low else 0.0
        cells = " | ".join(f"{v:.1%}" for v in values)
        print(f"| {method} | {cells} | {mean:.1%} ± {std:.1%} | {closed:+.0%} |")
    print()
    print(f"gap closed: share of the source-only -> target-oracle gap; {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
