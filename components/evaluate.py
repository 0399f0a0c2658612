from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    target_test: Input[Dataset],
    target_val: Input[Dataset],
    source_val: Input[Dataset],
    target_unlabelled: Input[Dataset],
    source_test: Input[Dataset],
    source_only: Input[Model],
    target_only: Input[Model],
    finetuned: Input[Model],
    adapted: Input[Model],
    select_by: str,
    experiment: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    best_model: Output[Model],
):
    """Scores baselines and candidates on the target validation and test splits, selects one by
    `select_by` (never by the test split), and reports."""
    from tlpipe import steps
    from tlpipe.tracking import current_pipeline_run
    from tlpipe.errors import exit_on_user_error

    result = exit_on_user_error(steps.evaluate)(
        target_test.path,
        baselines={"source-only": source_only.path, "target-only": target_only.path},
        candidates={"finetuned": finetuned.path, "adapted": adapted.path},
        evaluation_out=evaluation.path,
        report_out=report.path,
        best_model_out=best_model.path,
        experiment=experiment,
        pipeline_run=current_pipeline_run(),
        source_test=source_test.path,
        target_val=target_val.path,
        source_val=source_val.path,
        target_unlabelled=target_unlabelled.path,
        select_by=select_by,
    )
    steps.describe_evaluation(result, evaluation, metrics, confusion, best_model)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_retrain(
    target_test: Input[Dataset],
    target_val: Input[Dataset],
    source_val: Input[Dataset],
    target_unlabelled: Input[Dataset],
    source_test: Input[Dataset],
    start_model: Input[Model],
    finetuned: Input[Model],
    adapted: Input[Model],
    select_by: str,
    experiment: str,
    evaluation: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    best_model: Output[Model],
):
    """Scores the retrained candidates against the model they started from; selects a candidate by
    `select_by`."""
    from tlpipe import steps
    from tlpipe.tracking import current_pipeline_run
    from tlpipe.errors import exit_on_user_error

    result = exit_on_user_error(steps.evaluate)(
        target_test.path,
        baselines={steps.baseline_name(start_model.path): start_model.path},
        candidates={"finetuned": finetuned.path, "adapted": adapted.path},
        evaluation_out=evaluation.path,
        report_out=report.path,
        best_model_out=best_model.path,
        experiment=experiment,
        pipeline_run=current_pipeline_run(),
        best_of="candidates",
        source_test=source_test.path,
        target_val=target_val.path,
        source_val=source_val.path,
        target_unlabelled=target_unlabelled.path,
        select_by=select_by,
    )
    steps.describe_evaluation(result, evaluation, metrics, confusion, best_model)
