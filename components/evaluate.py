from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    target_test: Input[Dataset],
    source_only: Input[Model],
    target_only: Input[Model],
    finetuned: Input[Model],
    adapted: Input[Model],
    experiment: str,
    pipeline_run: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    best_model: Output[Model],
):
    """Scores baselines and candidates on the target test split, reports, and picks the best."""
    from tlpipe import steps
    from tlpipe.errors import exit_on_user_error

    result = exit_on_user_error(steps.evaluate)(
        target_test.path,
        baselines={"source-only": source_only.path, "target-only": target_only.path},
        candidates={"finetuned": finetuned.path, "adapted": adapted.path},
        evaluation_out=evaluation.path,
        report_out=report.path,
        best_model_out=best_model.path,
        experiment=experiment,
        pipeline_run=pipeline_run,
    )
    for row in result.results:
        metrics.log_metric(f"{row.name}_accuracy", row.accuracy)
    best = result.result(result.best)
    confusion.log_confusion_matrix(result.classes, best.confusion)
    evaluation.metadata.update({"best": result.best, "accuracy": best.accuracy})
    best_model.metadata.update({"candidate": result.best, "accuracy": best.accuracy})
