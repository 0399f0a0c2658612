from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def adapt(
    source_model: Input[Model],
    source_train: Input[Dataset],
    target_unlabelled: Input[Dataset],
    target_labelled: Input[Dataset],
    target_val: Input[Dataset],
    method: str,
    epochs: int,
    finetune_epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    source_augment: str,
    experiment: str,
    model: Output[Model],
    bottleneck: int = -1,
    backbone_lr: float = -1.0,
    sdat_rho: float = 0.02,
    target_augment: str = "auto",
    finetune_backbone_lr: float = 0.1,
    pretrained_weights: str = "",
):
    """Adapts the source model to the unlabelled target domain (DANN, CDAN+E, DAN, Deep CORAL, MCC, CDAN+MCC;
    +sdat for the adversarial ones, at radius sdat_rho; self-training: FixMatch, and AdaMatch, which also learns
    from the labelled target images where there are any; SHOT, source-free: source_train is never read and the
    target images take target_augment), or with dann+finetune adapts and then fine-tunes on the
    labelled target images for finetune_epochs (with target_augment and finetune_backbone_lr, as finetune).
    source_augment applies to the source images (tlpipe.augment). bottleneck (a width; 0: none) and backbone_lr (the backbone's rate as a fraction of lr)
    are the recipe for pretrained backbones; -1 takes it where the pipeline's pretrained_weights are set. target_val is scored each epoch, only to be watched: adaptation
    chooses nothing by it."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps import training

    model.metadata.update(exit_on_user_error(training.adapt)(locals()))
