from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def champion(
    source_train: Input[Dataset],
    model_name: str,
    backbone: str,
    pretrained_weights: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    source_augment: str,
    experiment: str,
    model: Output[Model],
):
    """Retraining's starting model: the registry's champion, or a source model trained now when there is none."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.champion import start_model
    from tlpipe.tracking import current_pipeline_run
    from tlpipe.train import TrainConfig

    config = TrainConfig.from_step(locals(), augment=source_augment)
    facts = exit_on_user_error(start_model)(
        source_train.path, model.path, model_name, backbone, pretrained_weights, config, experiment, current_pipeline_run()
    )
    model.metadata.update(facts)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def registered_model(source_model: str, target_labelled: Input[Dataset], experiment: str, model: Output[Model]):
    """The source-free pipeline's source model: a registered model as it is (its training images are not
    needed), checked against the target's classes."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.champion import given_model
    from tlpipe.tracking import current_pipeline_run

    model.metadata.update(exit_on_user_error(given_model)(source_model, target_labelled.path, model.path, experiment,
                                                          current_pipeline_run()))
