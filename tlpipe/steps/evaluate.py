"""The evaluate step: every model scored on the target validation and test splits, one selected on
validation, the report, and the analysis (A-distance, t-SNE, confusion matrices) in MLflow."""

import shutil
import time
from pathlib import Path

import mlflow

from tlpipe import analysis, selection, tracking
from tlpipe.analysis import too_small
from tlpipe.data import ImageSet, load_dataset
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import Evaluation, compare, task_accuracy
from tlpipe.models import load_model
from tlpipe.report import confusion_png, format_table, per_class_csv, selection_note, write_report
from tlpipe.steps.common import png_image, timed


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
    source_free = source is not None and len(source) == 0 and not source_meta.get("spec")  # a model stands for the source
    given = loaded.get("source-only", (None, {}))[1]
    source_name = source_meta.get("spec") or "source"
    if source_free and "registered_model" in given:
        source_name = f"models:/{given['registered_model']}/{given['registered_version']}"
    target_name = meta.get("spec") or "target"
    unlabelled = load_dataset(target_unlabelled)[0] if target_unlabelled and criterion in ("im", "snd") else None
    source_validation = load_dataset(source_val)[0] if source_val and criterion == "source-val" else None
    with tracking.step_run("evaluate", experiment, pipeline_run, {"test_hash": meta["content_hash"], "select_by": criterion},
                           shared={"select_by": criterion}) as run:
        test_split = tracking.log_split(meta, target_test, "test")
        val_split = tracking.log_split(val_meta, target_val, "validation") if val_meta else None
        evaluation = compare(models, test, best_of, meta.get("unseen", []), val, criterion, source_validation, unlabelled)
        evaluation.tasks = _task_rows(models, evaluation, source)
        evaluation.pretrained_weights = next((m["pretrained_weights"] for _, m in loaded.values() if m.get("pretrained_weights")), "")
        tsne, skipped = None, too_small(len(source), len(test)) if source is not None else ""
        if source_free:
            skipped = "none: a source-free run has no source images to compare the target's with"
        if source is not None and not skipped:
            source_sample, target_sample = analysis.domain_sample(source), analysis.domain_sample(test)
            pairs = analysis.domain_features({name: m for name, (m, _) in models.items()}, source_sample, target_sample)
            distances = analysis.domain_distances(pairs)
            for r in evaluation.results:
                r.a_distance = distances[r.name]
            tsne = analysis.tsne_png(pairs, source_sample.labels, target_sample.labels, distances, evaluation.classes,
                                     source_name=source_name, target_name=target_name)
            mlflow.log_image(png_image(tsne), "report/tsne.png")
        evaluation.save(evaluation_out)
        parent = tracking.parent_of(run)
        write_report(report_out, evaluation, f"tlpipe transfer report: {source_name} -> {target_name}",
                     run_facts(pipeline_run, parent, source_name, target_name, meta["content_hash"], methods)
                     | ({"domain analysis": skipped} if skipped else {}), tsne)
        _log_model_scores(evaluation, paths, test_split, val_split)
        mlflow.log_table(evaluation_table(evaluation), "report/evaluation_table.json")
        mlflow.set_tags({"tlpipe.selected": evaluation.best, "tlpipe.selected_by": criterion})
        mlflow.log_text(per_class_csv(evaluation), "report/per_class_accuracy.csv")
        for r in evaluation.results:
            mlflow.log_image(png_image(confusion_png(r, evaluation.classes)), f"report/confusion/{r.name}.png")
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


def baseline_name(model_dir: str) -> str:
    """How retraining's starting model appears in the evaluation table."""
    meta = load_model(model_dir)[1]
    return f"champion-v{meta['registered_version']}" if "registered_version" in meta else "source-only"
