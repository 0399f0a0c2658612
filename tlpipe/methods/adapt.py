"""The adapt step's methods by name: alignment without target labels (`<adversarial method>+sdat`:
sharpness-aware, tlpipe.methods.sdat), self-training (FixMatch; AdaMatch, which also learns from the k
labelled target images where there are any), source-free adaptation (SHOT: no source image read), and DANN
followed by few-shot fine-tuning on the labelled target images."""

import dataclasses

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.methods import adamatch, cdan, coral, dan, dann, fixmatch, mcc, shot
from tlpipe.methods.finetune import finetune
from tlpipe.models import Classifier
from tlpipe.train import LogFn, TrainConfig

UNSUPERVISED = {"dann": dann.adapt, "cdan+e": cdan.adapt, "dan": dan.adapt, "coral": coral.adapt, "mcc": mcc.adapt,
                "cdan+mcc": mcc.adapt_cdan, "fixmatch": fixmatch.adapt}
ADVERSARIAL = ("dann", "cdan+e", "cdan+mcc")  # the methods SDAT applies to
METHODS = (*UNSUPERVISED, "adamatch", *(f"{m}+sdat" for m in ADVERSARIAL), "shot", "dann+finetune")
SOURCE_FREE = ("shot",)  # the methods that read no source image
USING_TARGET_LABELS = ("adamatch", "dann+finetune")  # the methods that read the k labelled target images


# Adaptation's recipe for a backbone pretrained on ImageNet-scale data (the DANN and CDAN papers',
# Transfer-Learning-Library's), and for one trained from random weights on the source alone (the digit
# benchmark's): a bottleneck width and the backbone's fraction of the learning rate.
PRETRAINED_RECIPE = {"bottleneck": 256, "backbone_lr": 0.1}
RANDOM_START_RECIPE = {"bottleneck": 0, "backbone_lr": 1.0}
AUTO = -1


def recipe(config: TrainConfig, pretrained: bool) -> TrainConfig:
    """`config` with each of bottleneck and backbone_lr left at AUTO set by how the backbone started."""
    chosen = PRETRAINED_RECIPE if pretrained else RANDOM_START_RECIPE
    return dataclasses.replace(config, **{k: v for k, v in chosen.items() if getattr(config, k) == AUTO})


def check_method(method: str) -> None:
    if method not in METHODS:
        raise TlpipeError(f"unknown adaptation method '{method}'; use {', '.join(METHODS)}.")


def adapt(method: str, source_model: Classifier, source: ImageSet, target: ImageSet, config: TrainConfig,
          log: LogFn | None = None, labelled: ImageSet | None = None,
          finetune_config: TrainConfig | None = None) -> Classifier:
    """`labelled` (the k-shot target split) is used by adamatch (where it has images) and dann+finetune,
    `finetune_config` by dann+finetune."""
    check_method(method)
    if method in UNSUPERVISED:
        return UNSUPERVISED[method](source_model, source, target, config, log)
    if method == "shot":
        return shot.adapt(source_model, None, target, config, log)
    if method == "adamatch":
        return adamatch.adapt(source_model, source, target, config, log, labelled=labelled)
    if method.endswith("+sdat"):
        return UNSUPERVISED[method.removesuffix("+sdat")](source_model, source, target, config, log, sdat=True)
    if labelled is None or not labelled.is_labelled or len(labelled) == 0:
        raise TlpipeError("dann+finetune needs labelled target images; set target_labels_per_class to 1 or more.")
    adapted = dann.adapt(source_model, source, target, config, log)
    # The fine-tuning epochs continue the step's epoch count in the log.
    tune_log = (lambda epoch, metrics, model=None: log(config.epochs + epoch, metrics, model)) if log else None
    # Source augmentation belongs to the source images: the fine-tuning phase takes its own, the target's
    # (finetune_config.augment, as the finetune step does), and none without a config of its own.
    tune_config = finetune_config or dataclasses.replace(config, augment="none", backbone_lr=TrainConfig.backbone_lr)
    return finetune(adapted, labelled, "full", tune_config, log=tune_log)
