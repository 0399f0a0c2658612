from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    source_train: Input[Dataset],
    source_val: Input[Dataset],
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
    """Trains backbone + head on the labelled source domain (optionally from pretrained weights), with
    source_augment (tlpipe.augment: auto, none, colour, photo) applied to its images; source_val is scored each epoch."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.pretrain import pretrain
    from tlpipe.tracking import current_pipeline_run
    from tlpipe.train import TrainConfig

    config = TrainConfig.from_step(locals(), augment=source_augment)
    facts = exit_on_user_error(pretrain)(
        source_train.path, model.path, backbone, pretrained_weights, config, experiment, current_pipeline_run(),
        source_val.path,
    )
    model.metadata.update(facts)
