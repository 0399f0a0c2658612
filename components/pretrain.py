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
    from tlpipe.steps import training

    model.metadata.update(exit_on_user_error(training.pretrain)(locals()))
