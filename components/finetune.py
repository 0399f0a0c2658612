from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    source_model: Input[Model],
    target_labelled: Input[Dataset],
    target_val: Input[Dataset],
    strategy: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    experiment: str,
    step_name: str,
    model: Output[Model],
    source_train: Input[Dataset] = None,
    augment: str = "auto",
    backbone_lr: float = 0.1,
):
    """Fine-tunes the source model on the few labelled target images (strategy `scratch`: no transfer from
    the source, a new model from the source model's pretrained weights, if it had any; multitask and zero-shot also train on source_train, which the other strategies do not take); target_val is
    scored each epoch. augment (tlpipe.augment: auto, none, colour, photo) applies to the labelled target images;
    backbone_lr is the transferred backbone's rate as a fraction of lr."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps import training

    model.metadata.update(exit_on_user_error(training.finetune)(locals()))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def strategy_uses_source(strategy: str) -> bool:
    """Whether the fine-tuning strategy also trains on source_train (multitask, zero-shot): the pipeline hands
    the source images to finetune only then."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.methods.finetune import uses_source

    return exit_on_user_error(uses_source)(strategy)
