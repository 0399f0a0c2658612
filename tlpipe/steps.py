"""The pipeline's steps as plain functions over artifact paths: what each KFP component calls.

Each step validates its input, tracks itself as a nested MLflow run, writes its output artifact
and returns facts for the component's artifact metadata. User mistakes raise TlpipeError.
"""

import dataclasses
import functools
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from tlpipe import analysis, augment, distributed, selection, settings, storage, tracking
from tlpipe.checkpoint import Checkpoint
from tlpipe.data import ImageSet, dataset_meta, load_dataset, load_domain, save_dataset, split_source, split_target
from tlpipe.data.splits import shared_with_source
from tlpipe.data.attributes import DIGITS, signatures
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import (Evaluation, add_gate_section, compare, confusion_png, format_table, per_class_csv, score,
                             selection_note, task_accuracy, write_report)
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
    # Image folders are staged as shards here and copied into the split artifacts, never held in memory.
    with tempfile.TemporaryDirectory(prefix="tlpipe-ingest-") as work:
        source_data = load_domain(source, image_size, seed, work)
        target_data = load_domain(target, image_size, seed, work)
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
    summary = {k: params[k] for k in ("source", "target", "seed", "target_labels_per_class", "target_val_per_class",
                                       "image_size")}
    with tracking.step_run("ingest", experiment, pipeline_run, params, shared=summary) as run:
        mlflow.log_metrics({f"{name}_count": meta["count"] for name, meta in facts.items()})
        mlflow.log_metric("target_held_out_shared_with_source", shared)
        mlflow.set_tags({f"tlpipe.hash.{name}": meta["content_hash"] for name, meta in facts.items()})
        splits = [tracking.log_split(meta, out[name], context=name) for name, meta in facts.items()]
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
    validation: str = "",
) -> dict:
    """Trains backbone + head on the source; `validation` (source_val) is scored every epoch."""
    data, meta = load_dataset(source_train)
    val, val_meta = load_dataset(validation) if validation else (None, None)
    config = checkpointed(_augmenting(config, meta), pipeline_run, "pretrain")
    shared = {"backbone": backbone, "pretrained_weights": pretrained_weights or "none"}
    weights = read_weights(pretrained_weights) if pretrained_weights else None
    with tracking.step_run("pretrain", experiment, pipeline_run, {**shared, **_config_params(config)}, shared=shared,
                           system_metrics=True):
        _log_inputs((meta, source_train, "training"), (val_meta, validation, "validation"))
        spec = ModelSpec(backbone=backbone, classes=data.classes, input_size=data.images.shape[1])
        torch.manual_seed(config.seed)
        model = Classifier(spec, weights, pretrained_weights)
        final = distributed.run(config.nproc, supervised.pretrain, model, data, config,
                                log=tracking.EpochLogger("pretrain", config.epochs, val))
        saved = save_model(out, model, method="source-only", trained_on=meta["content_hash"], device=str(device()),
                           pretrained_weights=pretrained_weights)
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
        _log_model(out, saved, data)
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
    validation: str = "",
) -> dict:
    """Fine-tunes on the labelled target images; multitask and zero-shot also train on `source_train`.
    `validation` (target_val) is scored every epoch."""
    uses_source = finetuning.uses_source(strategy)
    if uses_source and not source_train:
        raise TlpipeError(f"fine-tuning strategy '{strategy}' trains on the source images too; give it source_train.")
    model, model_meta = load_model(source_model)
    data, meta = load_dataset(target_labelled)
    source, source_meta = load_dataset(source_train) if uses_source else (None, None)
    # Target-only starts where the source model started: from its pretrained weights, with a new head.
    pretrained = model_meta.get("pretrained_weights", "") if strategy == "scratch" else ""
    initial = read_weights(pretrained) if pretrained else None
    val, val_meta = load_dataset(validation) if validation else (None, None)
    config = checkpointed(_augmenting(config, meta), pipeline_run, step_name)
    params = {"strategy": strategy, **_config_params(config)}
    # The pipeline's strategy is the finetune step's; target-only's "scratch" describes only itself.
    shared = {"strategy": strategy} if step_name == "finetune" else None
    with tracking.step_run(step_name, experiment, pipeline_run, params, shared=shared, system_metrics=True):
        _log_inputs((meta, target_labelled, "training"), (source_meta, source_train, "training"),
                    (val_meta, validation, "validation"))
        tuned = distributed.run(config.nproc, finetuning.finetune, model, data, strategy, config,
                                log=tracking.EpochLogger(step_name, config.epochs, val), source=source,
                                attributes=meta.get("attributes", {}).get("table"), initial_weights=initial,
                                initial_source=pretrained)
        method = "target-only" if strategy == "scratch" else f"finetune:{strategy}"
        saved = save_model(out, tuned, method=method, trained_on=meta["content_hash"],
                           pretrained_weights=model_meta.get("pretrained_weights", ""))
        _log_model(out, saved, data)
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
    validation: str = "",
) -> dict:
    """Adapts the source model to the target domain; dann+finetune then fine-tunes on `target_labelled`
    for `finetune_epochs`. `validation` (target_val) is scored every epoch, only to be watched."""
    adaptation.check_method(method)
    model, _ = load_model(source_model)
    source, source_meta = load_dataset(source_train)
    target, meta = load_dataset(target_unlabelled)
    labelled, labelled_meta = (load_dataset(target_labelled) if target_labelled and method == "dann+finetune"
                               else (None, None))
    val, val_meta = load_dataset(validation) if validation else (None, None)
    config = checkpointed(_augmenting(config, source_meta), pipeline_run, "adapt")
    tune_config = dataclasses.replace(config, epochs=finetune_epochs or config.epochs, checkpoint_dir="")
    params = {"method": method, **_config_params(config, adaptation=True)}
    if labelled is not None:
        params["finetune_epochs"] = tune_config.epochs
    total_epochs = config.epochs + (tune_config.epochs if labelled is not None else 0)
    with tracking.step_run("adapt", experiment, pipeline_run, params, shared={"adapt_method": method},
                           system_metrics=True):
        _log_inputs((source_meta, source_train, "training"), (meta, target_unlabelled, "training"),
                    (labelled_meta, target_labelled, "training"), (val_meta, validation, "validation"))
        adapted = distributed.run(config.nproc, adaptation.adapt, method, model, source, target, config,
                                  log=tracking.EpochLogger("adapt", total_epochs, val), labelled=labelled,
                                  finetune_config=tune_config)
        saved = save_model(out, adapted, method=method, trained_on=meta["content_hash"])
        _log_model(out, saved, target)
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
    val, val_meta = load_dataset(target_val) if target_val else (None, None)
    criterion = selection.resolve(select_by, len(val) if val is not None else 0)
    paths = baselines | candidates
    loaded = {name: load_model(path, device()) for name, path in paths.items()}
    models = {name: (model, "baseline" if name in baselines else "candidate") for name, (model, _) in loaded.items()}
    methods = {name: model_meta.get("method", "") for name, (_, model_meta) in loaded.items()}
    source, source_meta = load_dataset(source_test) if source_test else (None, {})
    source_name, target_name = source_meta.get("spec") or "source", meta.get("spec") or "target"
    unlabelled = load_dataset(target_unlabelled)[0] if target_unlabelled and criterion in ("im", "snd") else None
    source_validation = load_dataset(source_val)[0] if source_val and criterion == "source-val" else None
    with tracking.step_run("evaluate", experiment, pipeline_run, {"test_hash": meta["content_hash"], "select_by": criterion},
                           shared={"select_by": criterion}) as run:
        test_split = tracking.log_split(meta, target_test, "test")
        val_split = tracking.log_split(val_meta, target_val, "validation") if val_meta else None
        evaluation = compare(models, test, best_of, meta.get("unseen", []), val, criterion, source_validation, unlabelled)
        evaluation.tasks = _task_rows(models, evaluation, source)
        evaluation.pretrained_weights = next((m["pretrained_weights"] for _, m in loaded.values() if m.get("pretrained_weights")), "")
        tsne = None
        if source is not None and len(source):
            source_sample, target_sample = analysis.domain_sample(source), analysis.domain_sample(test)
            pairs = analysis.domain_features({name: m for name, (m, _) in models.items()}, source_sample, target_sample)
            distances = analysis.domain_distances(pairs)
            for r in evaluation.results:
                r.a_distance = distances[r.name]
            tsne = analysis.tsne_png(pairs, source_sample.labels, target_sample.labels, distances, evaluation.classes,
                                     source_name=source_name, target_name=target_name)
            mlflow.log_image(_png_image(tsne), "report/tsne.png")
        evaluation.save(evaluation_out)
        parent = tracking.parent_of(run)
        write_report(report_out, evaluation, f"tlpipe transfer report: {source_name} -> {target_name}",
                     run_facts(pipeline_run, parent, source_name, target_name, meta["content_hash"], methods), tsne)
        _log_model_scores(evaluation, paths, test_split, val_split)
        mlflow.log_table(evaluation_table(evaluation), "report/evaluation_table.json")
        mlflow.set_tags({"tlpipe.selected": evaluation.best, "tlpipe.selected_by": criterion})
        mlflow.log_text(per_class_csv(evaluation), "report/per_class_accuracy.csv")
        for r in evaluation.results:
            mlflow.log_image(_png_image(confusion_png(r, evaluation.classes)), f"report/confusion/{r.name}.png")
        # KFP names artifact files after the output ("report"); MLflow gets browsable names.
        mlflow.log_text(Path(report_out).read_text(), "report/report.html")
        mlflow.log_text(Path(evaluation_out).read_text(), "report/evaluation.json")
        mlflow.log_text(format_table(evaluation), "report/table.txt")
        _summarise_evaluation(parent, evaluation, report_out)
    shutil.copytree(paths[evaluation.best], best_model_out, dirs_exist_ok=True)
    return evaluation


def run_facts(pipeline_run: str, parent: str, source: str, target: str, test_hash: str, methods: dict[str, str]) -> dict:
    """The report's header: what ran on what, when, and where its MLflow run is."""
    return {
        "run": pipeline_run,
        "source": source,
        "target": target,
        "models": ", ".join(f"{name} ({method})" if method and method != name else name for name, method in methods.items()),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "MLflow run": f"{parent} ({tracking.run_link(parent)})",
        "test split": test_hash,
    }


def evaluation_table(evaluation: Evaluation) -> dict[str, list]:
    """The evaluation as one table (mlflow.log_table): a row per model."""
    results = evaluation.results
    return {"model": [r.name for r in results], "role": [r.role for r in results],
            "val_accuracy": [r.val_accuracy for r in results], "test_accuracy": [r.accuracy for r in results],
            "selected": [r.name == evaluation.best for r in results], "a_distance": [r.a_distance for r in results]}


def _log_model_scores(evaluation: Evaluation, paths: dict[str, str], test_split, val_split) -> None:
    """Each model's scores as metrics of the run that trained it, linked to its LoggedModel and to the
    split measured: one `target_test_accuracy` and one `target_val_accuracy` key that compare across
    models and runs (a training run's own `val_accuracy` is per epoch, on the split it validated on)."""
    from tlpipe.registry import logged_model

    client = tracking.configure()
    for r in evaluation.results:
        logged = logged_model(paths[r.name])
        if logged is None:  # a model no step of this tlpipe logged (an older champion)
            continue
        scores = [("target_test_accuracy", r.accuracy, test_split), ("target_val_accuracy", r.val_accuracy, val_split),
                  ("a_distance", r.a_distance, test_split)]
        if evaluation.unseen:
            scores += [(k, getattr(r, k), test_split) for k in ("seen_accuracy", "unseen_accuracy", "unseen_among_unseen")]
        scores += [(f"task_{t['task']}_accuracy", t["multi_task"], test_split) for t in evaluation.tasks
                   if t["model"] == r.name]
        for key, value, split in scores:
            if value is not None:
                client.log_metric(logged["run_id"], key, value, model_id=logged["model_id"],
                                  dataset_name=split.name if split else None, dataset_digest=split.digest if split else None)


def _summarise_evaluation(parent: str, evaluation: Evaluation, report: str) -> None:
    """The headline of the evaluation on the pipeline's parent run: each model's accuracies, the
    selected model, the report, and a description."""
    client = tracking.configure()
    best = evaluation.result(evaluation.best)
    metrics = {f"{r.name}_test_accuracy": r.accuracy for r in evaluation.results}
    metrics |= {f"{r.name}_val_accuracy": r.val_accuracy for r in evaluation.results}
    metrics |= {"selected_test_accuracy": best.accuracy, "selected_val_accuracy": best.val_accuracy}
    tracking.log_to_parent(client, parent, metrics=metrics, tags={
        "tlpipe.selected": evaluation.best, "tlpipe.selected_by": evaluation.selected_by,
        "mlflow.note.content": describe_run(evaluation)})
    client.log_text(parent, Path(report).read_text(), "report.html")


def describe_run(evaluation: Evaluation, registration=None) -> str:
    """The parent run's description (Markdown, shown at the top of its MLflow page)."""
    best = evaluation.result(evaluation.best)
    val = "no target validation labels" if best.val_accuracy is None else f"validation {best.val_accuracy:.2%}"
    text = (f"Selected **{best.name}** by {selection_note(evaluation)}: {val}, test {best.accuracy:.2%} on "
            f"{evaluation.test_count} target test images. The report is the artifact `report.html`.")
    if registration is not None:
        text += f"\n\nRegistry: {registration.model_name} version {registration.version} ({registration.verdict})."
    return text


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
    classes = dataset_meta(source_train)["classes"]
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
    """Registers the selected model: it becomes the champion only if the paired test on the target test
    split shows it better, the challenger otherwise (tlpipe.registry); writes the evaluation report `report_in` with
    the gate's evidence to `report_out`."""
    from tlpipe.registry import Gate, register as register_version

    gate = Gate(gate_alpha, gate_margin)
    evaluation = Evaluation.load(evaluation_path)
    test, meta = load_dataset(target_test)
    if meta["content_hash"] != evaluation.test_hash:
        raise TlpipeError("the evaluation and the target test split given to register do not match; rerun evaluate.")
    best = evaluation.result(evaluation.best)
    model_meta = load_model(best_model)[1]
    parent = tracking.current_parent(experiment, pipeline_run)
    pipeline_params = tracking.configure().get_run(parent).data.params
    method, _, strategy = model_meta.get("method", "").partition(":")
    facts = {
        tracking.PIPELINE_RUN_TAG: pipeline_run,
        "tlpipe.candidate": best.name,
        "tlpipe.method": method,
        "tlpipe.strategy": strategy,
        "tlpipe.source": pipeline_params.get("source", ""),
        "tlpipe.target": pipeline_params.get("target", meta.get("spec", "")),
        "tlpipe.backbone": model_meta["spec"]["backbone"],
        "tlpipe.accuracy": f"{best.accuracy:.6f}",
        "tlpipe.val_accuracy": "" if best.val_accuracy is None else f"{best.val_accuracy:.6f}",
        "tlpipe.selected_by": evaluation.selected_by,
        "tlpipe.test_hash": evaluation.test_hash,
        "tlpipe.trained_on": model_meta.get("trained_on", ""),
        "tlpipe.code_version": tracking.code_version(),
    }
    # One fact a tag: the hyperparameters are on the version's source run, the run that trained it.
    tags = {**tracking.dataset_hashes(experiment, pipeline_run), **{k: v for k, v in facts.items() if v != ""}}
    if publish_to:
        tags["tlpipe.published"] = publish(best_model, publish_to, pipeline_run, "model")
    params = {"model_name": model_name, "gate_alpha": gate_alpha, "gate_margin": gate_margin}
    with tracking.step_run("register", experiment, pipeline_run, params, shared=params):
        client = tracking.configure()
        tracking.log_split(meta, target_test, "test")
        registration = register_version(client, best_model, model_name, test, tags, gate)
        client.update_model_version(model_name, registration.version, description=(
            f"{best.name} ({model_meta.get('method', '')}) of pipeline run {pipeline_run}: {best.accuracy:.2%} on "
            f"{registration.test_images} target test images. Gate: {registration.verdict}. Its parameters, data and "
            "training curves are on the source run."))
        mlflow.log_metrics({"accuracy": registration.accuracy})
        if registration.p_value is not None:
            mlflow.log_metric("gate_p_value", registration.p_value)
        verdict = {"tlpipe.registered_version": registration.version, "tlpipe.promoted": str(registration.promoted),
                   "tlpipe.gate.verdict": registration.verdict}
        mlflow.set_tags(verdict)
        tracking.log_to_parent(client, parent, metrics={"gate_p_value": registration.p_value},
                               tags={**verdict, "mlflow.note.content": describe_run(evaluation, registration)})
        if report_in:
            add_gate_section(report_in, report_out, registration)
            report = Path(report_out).read_text()
            mlflow.log_text(report, "report/report.html")
            client.log_text(parent, report, "report.html")
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
        with tracking.step_run(step_name, experiment, pipeline_run, {"strategy": strategy, **_config_params(step_config)},
                               system_metrics=True):
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


def _augmenting(config: TrainConfig, meta: dict) -> TrainConfig:
    """The config with its augmentation resolved for the images it trains on (`auto`: by their spec)."""
    return dataclasses.replace(config, augment=augment.resolve(config.augment, meta["spec"]))


def checkpointed(config: TrainConfig, pipeline_run: str, step: str) -> TrainConfig:
    """The config with the step's own checkpoint location: <root>/<pipeline run>/<step>.

    A retried step (same pipeline run) finds the checkpoint its killed predecessor left.
    """
    root = config.checkpoint_dir or str(settings.home() / "checkpoints")
    return dataclasses.replace(config, checkpoint_dir=f"{root.rstrip('/')}/{pipeline_run}/{step}")


def _done(config: TrainConfig) -> None:
    """The step's output is written: its checkpoint is no longer needed."""
    Checkpoint(config.checkpoint_dir, {}).remove()


ADAPTATION_SETTINGS = ("backbone_lr", "bottleneck", "sdat_rho")


def _config_params(config: TrainConfig, adaptation: bool = False) -> dict:
    """The training settings as a step's parameters; where checkpoints lie is not one, nor the
    adaptation settings in steps that do not adapt."""
    skip = {"checkpoint_dir", *(() if adaptation else ADAPTATION_SETTINGS)}
    return {k: v for k, v in vars(config).items() if k not in skip}


def _log_inputs(*splits: tuple[dict | None, str, str]) -> None:
    """Lists the (metadata, location, context) splits a step read among its run's inputs."""
    for meta, location, context in splits:
        if meta is not None:
            tracking.log_split(meta, location, context)


def _log_model(out: str, meta: dict, data: ImageSet) -> None:
    """Logs the model a training step wrote as a LoggedModel of its run, two training images as its
    input example."""
    from tlpipe.registry import log_trained_model

    log_trained_model(out, np.asarray(data.images[:2]), meta["method"])

