"""Multi-task learning, progressive networks and zero-shot learning on a domain pair; prints markdown tables.

    .venv/bin/python benchmarks/settings.py [--source digits] [--target digits-m] [--seed 0] [--unseen 7,8,9]

Uses the pipeline's splits, defaults and library calls (without KFP and MLflow). Zero-shot runs
apart: its source model is trained without the unseen classes, as ingest does with unseen_classes.
"""

import argparse
import time

import torch

from tlpipe.data import load_domain, split_source, split_target
from tlpipe.data.attributes import signatures
from tlpipe.evaluate import score, task_accuracy
from tlpipe.methods.finetune import finetune
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.train import TrainConfig


def splits(args, unseen=frozenset()):
    source = load_domain(args.source, 32, args.seed)
    target = load_domain(args.target, 32, args.seed)
    source_train, _, source_test = split_source(source, args.seed, unseen)
    target_parts = split_target(target, args.k, 0, args.seed, unseen)
    return source.classes, source_train, source_test, target_parts.labelled, target_parts.test


def source_model(classes, source_train, args):
    torch.manual_seed(args.seed)
    model = Classifier(ModelSpec("small-cnn", classes, 32))
    pretrain(model, source_train, TrainConfig(epochs=args.epochs, seed=args.seed))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="digits")
    parser.add_argument("--target", default="digits-m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--unseen", default="7,8,9")
    args = parser.parse_args()
    started = time.time()
    config = TrainConfig(epochs=args.epochs, seed=args.seed)

    classes, source_train, source_test, labelled, test = splits(args)
    source = source_model(classes, source_train, args)
    print(f"{args.source} -> {args.target}, seed {args.seed}, k = {args.k}, {args.epochs} epochs per step\n")
    print("| model | target test | source test |")
    print("|---|---|---|")
    print(f"| source-only | {score(source, test).accuracy:.2%} | {task_accuracy(source, source_test, 'target'):.2%} |")
    for strategy in ("scratch", "full", "progressive", "multitask:0.5", "multitask:1"):
        model = finetune(source, labelled, strategy, config, source=source_train)
        on_source = task_accuracy(model, source_test, "source") if model.spec.tasks else None
        shown = f"{on_source:.2%} (source head)" if on_source is not None else "-"
        name = "target-only" if strategy == "scratch" else strategy
        print(f"| {name} | {score(model, test).accuracy:.2%} | {shown} |", flush=True)

    unseen = frozenset(args.unseen.split(","))
    classes, source_train, _, labelled, test = splits(args, unseen)
    table = signatures(classes, "")["table"]
    source = source_model(classes, source_train, args)
    print(f"\nZero-shot: classes {', '.join(sorted(unseen))} in no training split; chance {1 / len(classes):.1%} over all "
          f"classes, {1 / len(unseen):.1%} among the unseen\n")
    print("| model | all | seen | unseen (over all classes) | unseen (among unseen) |")
    print("|---|---|---|---|---|")
    rows = [("source-only (linear head)", source)]
    rows += [(f"zero-shot:{head}", finetune(source, labelled, f"zero-shot:{head}", config, source=source_train,
                                            attributes=table)) for head in ("attributes", "embedding")]
    for name, model in rows:
        r = score(model, test, unseen=sorted(unseen))
        print(f"| {name} | {r.accuracy:.2%} | {r.seen_accuracy:.2%} | {r.unseen_accuracy:.2%} | {r.unseen_among_unseen:.2%} |",
              flush=True)
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
