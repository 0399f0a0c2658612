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
    from components.outputs import evaluate_into

    evaluate_into({"source-only": source_only.path, "target-only": target_only.path},
                  {"finetuned": finetuned.path, "adapted": adapted.path}, "all", locals())


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
    from components.outputs import evaluate_into
    from tlpipe.steps.evaluate import baseline_name

    evaluate_into({baseline_name(start_model.path): start_model.path},
                  {"finetuned": finetuned.path, "adapted": adapted.path}, "candidates", locals())
