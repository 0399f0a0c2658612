"""The adapt step: the source model adapted to the unlabelled target domain (dann+finetune: then tuned)."""

import dataclasses

from tlpipe import augment, distributed, tracking
from tlpipe.data import load_dataset
from tlpipe.methods import adapt as adaptation
from tlpipe.models import load_model
from tlpipe.steps.common import ADAPTATION_SETTINGS, augmenting, checkpointed, config_params, save_trained, timed, training_run
from tlpipe.train import TrainConfig


@timed
def adapt(
    source_model: str,
    source_train: str,
    target_unlabelled: str,
    out: str,
    method: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
    target_labelled: str = "",
    finetune_epochs: int = 0,
    validation: str = "",
    target_augment: str = "auto",
    finetune_backbone_lr: float = TrainConfig.backbone_lr,
    pretrained: bool = False,
) -> dict:
    """Adapts the source model to the target domain; adamatch also learns from `target_labelled` where it
    has images; dann+finetune then fine-tunes on it for `finetune_epochs` with `target_augment` and
    `finetune_backbone_lr`, as the finetune step would. `validation` (target_val) is scored every epoch,
    only to be watched. A bottleneck or backbone_lr of -1 in `config` is the recipe for a backbone that
    started from pretrained weights (`pretrained`, or the source model's own record) or from random ones."""
    adaptation.check_method(method)
    model, model_meta = load_model(source_model)
    # Pretrained: as the pipeline says, or as a given model records it (the source-free pipeline).
    config = adaptation.recipe(config, pretrained or bool(model_meta.get("pretrained_weights")))
    source_free = method in adaptation.SOURCE_FREE
    if source_free:  # it adapts the model as it is: no new layers to train without source labels
        config = dataclasses.replace(config, bottleneck=model.spec.bottleneck)
    source, source_meta = (None, None) if source_free else load_dataset(source_train)
    target, meta = load_dataset(target_unlabelled)
    labelled, labelled_meta = (load_dataset(target_labelled) if target_labelled and method in adaptation.USING_TARGET_LABELS
                               else (None, None))
    if method == "adamatch" and labelled is not None and len(labelled) == 0:
        labelled, labelled_meta = None, None  # plain unsupervised adaptation
    tunes = labelled is not None and method == "dann+finetune"
    val, val_meta = load_dataset(validation) if validation else (None, None)
    if source_free:  # it trains on target images alone: theirs is target_augment
        config = checkpointed(augmenting(dataclasses.replace(config, augment=target_augment), meta), pipeline_run, "adapt")
    else:
        config = checkpointed(augmenting(config, source_meta), pipeline_run, "adapt")
    tune_config = dataclasses.replace(config, epochs=finetune_epochs or config.epochs, checkpoint_dir="",
                                      backbone_lr=finetune_backbone_lr,
                                      augment=augment.resolve(target_augment, labelled_meta) if labelled_meta
                                      else "none")
    params = {"method": method, **config_params(config, ADAPTATION_SETTINGS)}
    if tunes:
        params |= {"finetune_epochs": tune_config.epochs, "finetune_augment": tune_config.augment,
                   "finetune_backbone_lr": tune_config.backbone_lr}
    total_epochs = config.epochs + (tune_config.epochs if tunes else 0)
    inputs = [(source_meta, source_train, "training"), (meta, target_unlabelled, "training"),
              (labelled_meta, target_labelled, "training"), (val_meta, validation, "validation")]
    with training_run("adapt", config, experiment, pipeline_run, params, {"adapt_method": method, "adapt_epochs": config.epochs},
                      inputs):
        adapted = distributed.run(config.nproc, adaptation.adapt, method, model, source, target, config,
                                  log=tracking.EpochLogger("adapt", total_epochs, val), labelled=labelled,
                                  finetune_config=tune_config)
        return save_trained(out, adapted, target, method=method, trained_on=meta["content_hash"])
