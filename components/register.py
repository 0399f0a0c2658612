from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    best_model: Input[Model],
    evaluation: Input[Artifact],
    evaluation_report: Input[HTML],
    target_test: Input[Dataset],
    model_name: str,
    experiment: str,
    publish_to: str,
    gate_alpha: float,
    gate_margin: float,
    min_accuracy: float,
    registration: Output[Artifact],
    report: Output[HTML],
):
    """Registers the selected model in MLflow as `challenger`; promotes it to `champion` only when a paired
    test on the target test split shows it better and it reaches `min_accuracy`. `report` is the evaluation
    report with the gate's verdict."""
    from dataclasses import asdict

    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.register import register
    from tlpipe.tracking import current_pipeline_run

    result = exit_on_user_error(register)(
        best_model.path, evaluation.path, target_test.path, model_name, experiment, current_pipeline_run(), registration.path,
        publish_to, gate_alpha, gate_margin, evaluation_report.path, report.path, min_accuracy,
    )
    registration.metadata.update(asdict(result))
