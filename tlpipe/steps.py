"""The pipeline's steps as plain functions over artifact paths: what each KFP component calls.

Each step validates its input, tracks itself as a nested MLflow run, writes its output artifact
and returns facts for the component's artifact metadata. User mistakes raise TlpipeError.
"""

import dataclasses
import functools
import io
import json
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from tlpipe import analysis, augment, distributed, selection, settings, storage, tracking
from tlpipe.checkpoint import Checkpoint
from tlpipe.data import ImageSet, load_dataset, load_domain, save_dataset, split_source, split_target
from tlpipe.data.splits import shared_with_source
from tlpipe.data.attributes import DIGITS, signatures
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import (Evaluation, add_gate_section, compare, confusion_png, format_table, per_class_csv, score,
                             task_accuracy, write_report)
from tlpipe.methods import adapt as adaptation, finetune as finetuning, supervised
from tlpipe.models import Classifier, ModelSpec, load_model, read_weights, save_model
from tlpipe.train import TrainConfig, device

ADAPT_METHODS = adaptation.METHODS


# What a step prints when it ends: the local runner's timing table reads it from the log.
COMPUTE_MARK = "tlpipe: step compute"


def timed(func):
    """Prints the time spent inside the step, so that the process start, imports and KFP's artifact
    handling around it can be told apart from the step's own work."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            print(f"{COMPUTE_MARK} {time.perf_counter() - started:.3f} s", flush=True)

    return wrapper


SPLITS = ["source_train", "source_val", "source_test", "target_labelled", "target_val", "target_unlabelled",
          "target_test"]


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
    source_data = load_domain(source, image_size, seed)
    target_data = load_domain(target, image_size, seed)
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
    source_train, source_val, source_test = split_source(source_data, seed, unseen)
    parts = split_target(target_data, target_labels_per_class, target_val_per_class, seed, unseen)
    if parts.val_short:
        print(f"target_val_per_class={target_val_per_class}: classes {', '.join(parts.val_short)} have fewer held-out "
              "images, so half of those validate and half test", flush=True)
    shared = shared_with_source(source_data, np.concatenate([parts.val.ids, parts.test.ids]), source_train)
    if shared:
        print(f"{shared} of the {len(parts.val) + len(parts.test)} target validation and test images are exact "
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
    with tracking.step_run("ingest", experiment, pipeline_run, params):
        mlflow.log_metrics({f"{name}_count": meta["count"] for name, meta in facts.items()})
        mlflow.log_metric("target_held_out_shared_with_source", shared)
        mlflow.set_tags({f"tlpipe.hash.{name}": meta["content_hash"] for name, meta in facts.items()})
    return facts


def _unseen(text: str, classes: list[str]) -> frozenset:
    unseen = frozenset(c.strip() for c in text.split(",") if c.strip())
    unknown = sorted(unseen - set(classes))
    if unknown:
        raise TlpipeError(f"unseen_classes {unknown} are not classes of the data ({', '.join(classes)}).")
    if len(unseen) >= len(classes) - 1:
        raise TlpipeError("unseen_classes must leave at least two classes seen in training.")
    return unseen


def _model_facts(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("format", "spec")} | {"backbone": meta["spec"]["backbone"]}


@timed
def pretrain(
    source_train: str,
    out: str,
    backbone: str,
    pretrained_weights: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
) -> dict:
    augment.get(config.augment)
    data, meta = load_dataset(source_train)
    config = checkpointed(config, pipeline_run, "pretrain")
    params = {"backbone": backbone, "pretrained_weights": pretrained_weights or "none", **_config_params("pretrain", config)}
    weights = read_weights(pretrained_weights) if pretrained_weights else None
    with tracking.step_run("pretrain", experiment, pipeline_run, params):
        spec = ModelSpec(backbone=backbone, classes=data.classes, input_size=data.images.shape[1])
        torch.manual_seed(config.seed)
        model = Classifier(spec, weights, pretrained_weights)
        final = distributed.run(config.nproc, supervised.pretrain, model, data, config,
                                log=tracking.EpochLogger("pretrain", config.epochs))
        saved = save_model(out, model, method="source-only", trained_on=meta["content_hash"], device=str(device()))
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
    _done(config)
    return _model_facts(saved)


@timed
def finetune(
    source_model: str,
    target_labelled: str,
    out: str,
    strategy: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
    step_name: str = "finetune",
    source_train: str = "",
) -> dict:
    """Fine-tunes on the labelled target images; multitask and zero-shot also train on `source_train`."""
    name, _ = finetuning.parse_strategy(strategy)
    model, _ = load_model(source_model)
    data, meta = load_dataset(target_labelled)
    source = load_dataset(source_train)[0] if source_train and name in ("multitask", "zero-shot") else None
    config = checkpointed(config, pipeline_run, step_name)
    params = {"strategy": strategy, **_config_params(step_name, config)}
    with tracking.step_run(step_name, experiment, pipeline_run, params):
        tuned = distributed.run(config.nproc, finetuning.finetune, model, data, strategy, config,
                                log=tracking.EpochLogger(step_name, config.epochs), source=source,
                                attributes=meta.get("attributes", {}).get("table"))
        method = "target-only" if strategy == "scratch" else f"finetune:{strategy}"
        saved = save_model(out, tuned, method=method, trained_on=meta["content_hash"])
    _done(config)
    return _model_facts(saved)


@timed
def adapt(
    source_model: str,
    source_train: str,
    target_unlabelled: str,
    out: str,
    method: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
    target_labelled: str = "",
    finetune_epochs: int = 0,
) -> dict:
    """Adapts the source model to the target domain; dann+finetune then fine-tunes on `target_labelled`
    for `finetune_epochs`."""
    adaptation.check_method(method)
    augment.get(config.augment)
    model, _ = load_model(source_model)
    source, _ = load_dataset(source_train)
    target, meta = load_dataset(target_unlabelled)
    labelled = load_dataset(target_labelled)[0] if target_labelled and method == "dann+finetune" else None
    config = checkpointed(config, pipeline_run, "adapt")
    tune_config = dataclasses.replace(config, epochs=finetune_epochs or config.epochs, checkpoint_dir="")
    params = {"method": method, **_config_params("adapt", config)}
    if labelled is not None:
        params["finetune_epochs"] = tune_config.epochs
    total_epochs = config.epochs + (tune_config.epochs if labelled is not None else 0)
    with tracking.step_run("adapt", experiment, pipeline_run, params):
        adapted = distributed.run(config.nproc, adaptation.adapt, method, model, source, target, config,
                                  log=tracking.EpochLogger("adapt", total_epochs), labelled=labelled,
                                  finetune_config=tune_config)
        saved = save_model(out, adapted, method=method, trained_on=meta["content_hash"])
    _done(config)
    return _model_facts(saved)


@timed
def evaluate(
    target_test: str,
    baselines: dict[str, str],
    candidates: dict[str, str],
    evaluation_out: str,
    report_out: str,
    best_model_out: str,
    experiment: str,
    pipeline_run: str,
    best_of: str = "all",
    source_test: str = "",
    target_val: str = "",
    source_val: str = "",
    target_unlabelled: str = "",
    select_by: str = "auto",
) -> Evaluation:
    """Scores baselines and candidates on the target validation and test splits, selects one by
    `select_by` (tlpipe.selection; of all, or with best_of="candidates" of the candidates) and copies it
    out. The test split only reports."""
    test, meta = load_dataset(target_test)
    if not test.is_labelled or len(test) == 0:
        raise TlpipeError(f"target test split {target_test} is empty or unlabelled.")
    val = load_dataset(target_val)[0] if target_val else None
    criterion = selection.resolve(select_by, len(val) if val is not None else 0)
    models = {name: (load_model(path)[0], "baseline") for name, path in baselines.items()}
    models |= {name: (load_model(path)[0], "candidate") for name, path in candidates.items()}
    paths = baselines | candidates
    source = load_dataset(source_test)[0] if source_test else None
    unlabelled = load_dataset(target_unlabelled)[0] if target_unlabelled and criterion in ("im", "snd") else None
    source_validation = load_dataset(source_val)[0] if source_val and criterion == "source-val" else None
    with tracking.step_run("evaluate", experiment, pipeline_run, {"test_hash": meta["content_hash"], "select_by": criterion}):
        evaluation = compare(models, test, best_of, meta.get("unseen", []), val, criterion, source_validation, unlabelled)
        evaluation.tasks = _task_rows(models, evaluation, source)
        tsne = None
        if source is not None and len(source):
            pairs = analysis.domain_features({name: m for name, (m, _) in models.items()}, source, test)
            distances = analysis.domain_distances(pairs)
            for r in evaluation.results:
                r.a_distance = distances[r.name]
            # Before (the starting model) and after transfer; target-only never saw the source.
            pictured = {name: pair for name, pair in pairs.items() if name != "target-only"}
            tsne = analysis.tsne_png(pictured, source.labels, test.labels, distances)
            mlflow.log_metrics({f"{name}_a_distance": d for name, d in distances.items()})
            mlflow.log_image(_png_image(tsne), "report/tsne.png")
        evaluation.save(evaluation_out)
        write_report(report_out, evaluation, "tlpipe transfer report",
                     {"pipeline run": pipeline_run, "target": meta.get("spec", ""), "test split": meta["content_hash"],
                      "selected by": selection.CRITERIA[criterion]},
                     tsne)
        mlflow.log_metrics({f"{r.name}_test_accuracy": r.accuracy for r in evaluation.results})
        mlflow.log_metrics({f"{r.name}_val_accuracy": r.val_accuracy for r in evaluation.results
                            if r.val_accuracy is not None})
        mlflow.log_metrics({f"{r.name}_{criterion}": r.selection_score for r in evaluation.results
                            if criterion != "target-val"})
        mlflow.set_tags({"tlpipe.selected": evaluation.best, "tlpipe.selected_by": criterion})
        mlflow.log_text(per_class_csv(evaluation), "report/per_class_accuracy.csv")
        for r in evaluation.results:
            mlflow.log_image(_png_image(confusion_png(r, evaluation.classes)), f"report/confusion/{r.name}.png")
        if evaluation.unseen:
            mlflow.log_metrics({f"{r.name}_{kind}": getattr(r, kind) for r in evaluation.results
                                for kind in ("seen_accuracy", "unseen_accuracy", "unseen_among_unseen")})
        for t in evaluation.tasks:
            mlflow.log_metric(f"{t['model']}_task_{t['task']}_accuracy", t["multi_task"])
        # KFP names artifact files after the output ("report"); MLflow gets browsable names.
        mlflow.log_text(Path(report_out).read_text(), "report/report.html")
        mlflow.log_text(Path(evaluation_out).read_text(), "report/evaluation.json")
        mlflow.log_text(format_table(evaluation), "report/table.txt")
    shutil.copytree(paths[evaluation.best], best_model_out, dirs_exist_ok=True)
    return evaluation


def _png_image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _task_rows(models: dict, evaluation: Evaluation, source: ImageSet | None) -> list[dict]:
    """Each multi-task model's accuracy per task, next to the single-task model of that task:
    target-only on the target test split, source-only on the source test split."""
    multitask = {name: model for name, (model, _) in models.items() if "source" in model.spec.tasks}
    if not multitask:
        return []
    single = {r.name: r.accuracy for r in evaluation.results}
    baseline = models.get("source-only")
    rows = []
    for name, model in multitask.items():
        rows.append({"task": "target", "model": name, "multi_task": single[name],
                     "single_task": single.get("target-only"), "single_task_model": "target-only" if "target-only" in single else None})
        if source is not None:
            rows.append({"task": "source", "model": name, "multi_task": task_accuracy(model, source, "source"),
                         "single_task": task_accuracy(baseline[0], source, "target") if baseline else None,
                         "single_task_model": "source-only" if baseline else None})
    return rows


def describe_evaluation(result: Evaluation, evaluation, metrics, confusion, best_model) -> None:
    """Fills an evaluate component's KFP outputs: metrics, the best model's confusion matrix, metadata."""
    for row in result.results:
        metrics.log_metric(f"{row.name}_test_accuracy", row.accuracy)
        if row.val_accuracy is not None:
            metrics.log_metric(f"{row.name}_val_accuracy", row.val_accuracy)
    best = result.result(result.best)
    confusion.log_confusion_matrix(result.classes, best.confusion)
    facts = {"selected": result.best, "selected_by": result.selected_by, "test_accuracy": best.accuracy,
             "val_accuracy": best.val_accuracy}
    evaluation.metadata.update(facts)
    best_model.metadata.update(facts)


@timed
def start_model(
    source_train: str,
    out: str,
    model_name: str,
    backbone: str,
    pretrained_weights: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
) -> dict:
    """Retraining's starting point: the registry's champion, or a new source model when there is none."""
    from tlpipe.registry import export_champion

    version = export_champion(model_name, out)
    if version is None:
        print(f"no champion of '{model_name}' in the registry: training the source model", flush=True)
        return {**pretrain(source_train, out, backbone, pretrained_weights, config, experiment, pipeline_run), "start": "source"}
    classes = load_dataset(source_train)[0].classes
    _, meta = load_model(out)
    if meta["spec"]["classes"] != classes:
        raise TlpipeError(f"the champion of '{model_name}' (version {version}) predicts classes {meta['spec']['classes']}, "
                          f"the source data has {classes}; retrain needs the same classes.")
    print(f"starting from the champion of '{model_name}', version {version}", flush=True)
    return {**_model_facts(meta), "start": "champion", "champion_version": version}


def baseline_name(model_dir: str) -> str:
    """How retraining's starting model appears in the evaluation table."""
    meta = load_model(model_dir)[1]
    return f"champion-v{meta['registered_version']}" if "registered_version" in meta else "source-only"


@timed
def register(
    best_model: str,
    evaluation_path: str,
    target_test: str,
    model_name: str,
    experiment: str,
    pipeline_run: str,
    out: str,
    publish_to: str = "",
    gate_alpha: float = 0.05,
    gate_margin: float = 0.0,
    report_in: str = "",
    report_out: str = "",
):
    """Registers the selected model (alias challenger) and moves champion only if the paired test on the
    target test split shows it better (tlpipe.registry); writes the evaluation report `report_in` with
    the gate's evidence to `report_out`."""
    from tlpipe.registry import Gate, register as register_version

    gate = Gate(gate_alpha, gate_margin)
    evaluation = Evaluation.load(evaluation_path)
    test, meta = load_dataset(target_test)
    if meta["content_hash"] != evaluation.test_hash:
        raise TlpipeError("the evaluation and the target test split given to register do not match; rerun evaluate.")
    best = evaluation.result(evaluation.best)
    model_meta = load_model(best_model)[1]
    params, dataset_hashes = tracking.pipeline_lineage(experiment, pipeline_run)
    tags = {
        **dataset_hashes,
        tracking.PIPELINE_RUN_TAG: pipeline_run,
        "tlpipe.candidate": best.name,
        "tlpipe.method": model_meta.get("method", ""),
        "tlpipe.accuracy": f"{best.accuracy:.6f}",
        "tlpipe.val_accuracy": "" if best.val_accuracy is None else f"{best.val_accuracy:.6f}",
        "tlpipe.selected_by": evaluation.selected_by,
        "tlpipe.test_hash": evaluation.test_hash,
        "tlpipe.trained_on": model_meta.get("trained_on", ""),
        "tlpipe.code_version": tracking.code_version(),
        # MLflow tag values are limited in length; parameters are also on the runs in full.
        "tlpipe.params": json.dumps(params, sort_keys=True)[:5000],
    }
    if publish_to:
        tags["tlpipe.published"] = publish(best_model, publish_to, pipeline_run, "model")
    with tracking.step_run("register", experiment, pipeline_run,
                           {"model_name": model_name, "gate_alpha": gate_alpha, "gate_margin": gate_margin}):
        client = tracking.configure()
        registration = register_version(client, best_model, model_name, test, tags, gate)
        mlflow.log_metrics({"accuracy": registration.accuracy})
        if registration.p_value is not None:
            mlflow.log_metric("gate_p_value", registration.p_value)
        mlflow.set_tags({"tlpipe.registered_version": registration.version, "tlpipe.promoted": str(registration.promoted),
                         "tlpipe.gate.verdict": registration.verdict})
        if report_in:
            add_gate_section(report_in, report_out, registration)
            mlflow.log_text(Path(report_out).read_text(), "report/report.html")
    registration.save(out)
    return registration


@timed
def layer_transfer(
    source_model: str,
    target_labelled: str,
    target_test: str,
    out: str,
    blocks: int,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
) -> list[dict]:
    """One k of the layer sweep: the first `blocks` blocks copied from the source model, frozen (AnB)
    and, separately, fine-tuned (AnB+), the rest trained fresh on the labelled target images; both
    scored on the target test split."""
    model, _ = load_model(source_model)
    labelled, _ = load_dataset(target_labelled)
    test, _ = load_dataset(target_test)
    if not test.is_labelled or len(test) == 0:
        raise TlpipeError(f"target test split {target_test} is empty or unlabelled.")
    rows = []
    for mode, strategy in analysis.SWEEP_MODES.items():
        strategy = strategy.format(k=blocks)
        step_name = f"layers-{blocks}-{mode}"
        step_config = checkpointed(config, pipeline_run, step_name)
        with tracking.step_run(step_name, experiment, pipeline_run, {"strategy": strategy, **_config_params("layers", step_config)}):
            tuned = distributed.run(step_config.nproc, finetuning.finetune, model, labelled, strategy, step_config,
                                    log=tracking.EpochLogger(step_name, step_config.epochs))
            rows.append({"blocks": blocks, "mode": mode, "strategy": strategy, "accuracy": score(tuned, test).accuracy})
            mlflow.log_metric("accuracy", rows[-1]["accuracy"])
        _done(step_config)
    Path(out).write_text(json.dumps(rows))
    return rows


@timed
def layer_sweep_report(points: list[str], out: str, report_out: str, experiment: str, pipeline_run: str) -> list[dict]:
    """Gathers the sweep's points into one table and one plot (HTML report and MLflow artifacts)."""
    rows = sorted((row for p in points for row in json.loads(Path(p).read_text())), key=lambda r: (r["blocks"], r["mode"]))
    table = analysis.format_layer_sweep(rows)
    png = analysis.layer_sweep_png(rows, "layer transferability: target accuracy vs blocks copied")
    Path(out).write_text(json.dumps(rows, indent=2))
    Path(report_out).write_text(analysis.layer_sweep_html(table, png, pipeline_run))
    with tracking.step_run("layer-sweep", experiment, pipeline_run, {"points": len(rows)}):
        mlflow.log_text(table, "report/layer_sweep.txt")
        mlflow.log_text(json.dumps(rows, indent=2), "report/layer_sweep.json")
        mlflow.log_image(_png_image(png), "report/layer_sweep.png")
        mlflow.log_text(Path(report_out).read_text(), "report/report.html")
    return rows


def publish(directory: str, publish_to: str, pipeline_run: str, name: str) -> str:
    """Copies an artifact directory to <publish_to>/<pipeline_run>/<name> (a local path or s3://)."""
    location = f"{publish_to.rstrip('/')}/{pipeline_run}/{name}"
    storage.upload(directory, location)
    return location


def checkpointed(config: TrainConfig, pipeline_run: str, step: str) -> TrainConfig:
    """The config with the step's own checkpoint location: <root>/<pipeline run>/<step>.

    A retried step (same pipeline run) finds the checkpoint its killed predecessor left.
    """
    root = config.checkpoint_dir or str(settings.home() / "checkpoints")
    return dataclasses.replace(config, checkpoint_dir=f"{root.rstrip('/')}/{pipeline_run}/{step}")


def _done(config: TrainConfig) -> None:
    """The step's output is written: its checkpoint is no longer needed."""
    Checkpoint(config.checkpoint_dir, {}).remove()


def _config_params(step: str, config: TrainConfig) -> dict:
    return {f"{step}_{k}": v for k, v in vars(config).items()}

