from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    best_model: Input[Model],
    evaluation: Input[Artifact],
    target_test: Input[Dataset],
    model_name: str,
    experiment: str,
    pipeline_run: str,
    publish_to: str,
    registration: Output[Artifact],
):
    """Registers the best model in MLflow as `challenger`; promotes it to `champion` only if better."""
    from dataclasses import asdict

    from tlpipe import steps
    from tlpipe.errors import exit_on_user_error

    result = exit_on_user_error(steps.register)(
        best_model.path, evaluation.path, target_test.path, model_name, experiment, pipeline_run, registration.path,
        publish_to,
    )
    registration.metadata.update(asdict(result))
