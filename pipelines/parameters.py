"""The pipelines' parameters, declared once: name, type, default and meaning.

Each pipeline names the parameters it takes (`TRANSFER`, `RETRAIN`, `LAYER_SWEEP`, `PREDICT`, `SOURCE_FREE`) and `signature`
turns the list into the function KFP compiles: the same defaults everywhere, and the meanings as the
pipeline's documented arguments, which KFP writes into the compiled IR (the Kubeflow UI's run form
shows them), `tlpipe params` prints and the docs' parameter reference lists.
"""

import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable


@dataclass(frozen=True)
class Parameter:
    name: str
    type: type
    default: Any
    meaning: str  # one line: what it is, its values


PARAMETERS = {p.name: p for p in [
    Parameter("source", str, "digits", "The labelled source domain: digits, digits-m, syn-digits, "
              "imagefolder:<folder or s3://bucket/prefix> (one subfolder per class), or torchvision:<Dataset>:<root>."),
    Parameter("target", str, "digits-m", "The target domain, in the same forms as source, with the same classes."),
    Parameter("target_labels_per_class", int, 10, "k: labelled target images per class that fine-tuning trains on "
              "(k-shot)."),
    Parameter("target_val_per_class", int, 10, "Labelled target validation images per class, what evaluate selects "
              "the model by; 0: no target validation labels (select_by then decides)."),
    Parameter("seed", int, 0, "Seeds the splits, initialisation and batch order: same inputs and seed, same metrics "
              "on CPU."),
    Parameter("image_size", int, 32, "Pixels per side the images are stored and trained at (at least 8, and what the "
              "backbone takes: 16 for small-cnn; a run that is given less says the smallest); raise it for photos, e.g. "
              "224 for ImageNet backbones."),
    Parameter("backbone", str, "small-cnn", "The network: small-cnn, resnet18, resnet50, mobilenet_v3_large, "
              "mobilenet_v3_small, efficientnet_b0, or timm:<model> for any timm model."),
    Parameter("pretrained_weights", str, "", "Where the backbone starts: a .safetensors or .pth file (local or "
              "s3://), a torchvision weights enum, hf-hub:<repo> or timm:<model>.<tag>; empty: random weights."),
    Parameter("strategy", str, "full", "Fine-tuning strategy: full, freeze:<k>, linear-probe, l2sp:<alpha>, "
              "copy:<k>, copy+:<k>, scratch, progressive, multitask[:<weight>], zero-shot:attributes or "
              "zero-shot:embedding."),
    Parameter("finetune_backbone_lr", float, 0.1, "The transferred backbone's learning rate in fine-tuning "
              "(full, freeze:<k>, l2sp, zero-shot and dann+finetune's fine-tuning phase) as a fraction of lr, the "
              "new head's; 1: one rate for every layer."),
    Parameter("adapt_method", str, "dann", "Adaptation without target labels: dann, cdan+e, dan, coral, mcc, "
              "cdan+mcc, dann+sdat, cdan+e+sdat, cdan+mcc+sdat, fixmatch (self-training); adamatch (self-training "
              "that also learns from the labelled target images, where there are any); shot (source-free: adapts the "
              "source model from target images alone, reading no source image); or dann+finetune (adapt, then "
              "fine-tune)."),
    Parameter("adapt_bottleneck", int, -1, "Width of a bottleneck layer (linear, batch norm, ReLU) between backbone "
              "and a new head in adaptation; 0: none; -1: the recipe for the backbone's start, 256 (the usual choice "
              "for ImageNet backbones) with pretrained_weights, none without."),
    Parameter("adapt_backbone_lr", float, -1.0, "The backbone's learning rate in adaptation as a fraction of lr, "
              "the head's and discriminator's; -1: 0.1 with pretrained_weights (the usual choice for ImageNet "
              "backbones), 1 without."),
    Parameter("sdat_rho", float, 0.02, "SDAT's neighbourhood radius, for the methods named +sdat."),
    Parameter("source_augment", str, "auto", "Augmentation of the source images in pretraining and adaptation: "
              "auto (for image folders crop up to 64 px a side, photo above; none for the built-in and torchvision "
              "domains), none, crop, photo, flip, colour, strong, or several joined by + (photo+flip: the ImageNet "
              "recipe; flip only where a mirrored image has the same class)."),
    Parameter("target_augment", str, "auto", "Augmentation of the labelled target images in fine-tuning, "
              "target-only and dann+finetune's fine-tuning phase: as source_augment."),
    Parameter("source_epochs", int, 30, "Epochs of training on the source (pretrain; retrain's source model when "
              "there is no champion)."),
    Parameter("finetune_epochs", int, 30, "Epochs of fine-tuning (and of target-only, and of the layer sweep's "
              "training)."),
    Parameter("adapt_epochs", int, 120, "Epochs of adaptation."),
    Parameter("batch_size", int, 64, "Images per training step (SGD with momentum 0.9)."),
    Parameter("lr", float, 0.01, "Learning rate, annealed as lr/(1+10p)^0.75 over training."),
    Parameter("select_by", str, "auto", "How evaluate chooses the model to register: target-val, source-val, im, "
              "snd, or auto (target-val when there are target validation images, im otherwise)."),
    Parameter("gate_alpha", float, 0.05, "The champion gate: promote only when the one-sided exact McNemar test on "
              "the target test split gives p below this (above 0, at most 1)."),
    Parameter("gate_margin", float, 0.0, "The champion gate: promote only with a test accuracy gain of at least "
              "this many points."),
    Parameter("min_accuracy", float, 0.0, "The quality floor: no version whose target test accuracy is below this "
              "(0 to 1) becomes the champion, the first one included; 0: off. The table prints chance to set it by."),
    Parameter("model_name", str, "tlpipe", "The registered model's name in the MLflow model registry."),
    Parameter("experiment", str, "tlpipe", "The MLflow experiment the runs go to."),
    Parameter("publish_to", str, "", "Also copy the dataset splits and the registered model (predict: the "
              "predictions) to <publish_to>/<pipeline run>/ (a folder or s3://bucket/prefix); empty: no copy."),
    Parameter("checkpoint_root", str, "", "Where training steps checkpoint (a folder or s3://); empty: "
              "$TLPIPE_HOME/checkpoints locally; on a cluster an s3:// location."),
    Parameter("checkpoint_every", int, 1, "Epochs between checkpoints."),
    Parameter("nproc", int, 0, "Data-parallel processes per training step: 0 is one per visible GPU (1 on CPU)."),
    Parameter("unseen_classes", str, "", "Comma-separated classes kept out of every training split (zero-shot); "
              "they appear only in the test splits."),
    Parameter("attributes", str, "", "Class attribute table for zero-shot (CSV: class,<attribute>,...; local or "
              "s3://); the digit domains have a built-in one."),
    Parameter("source_model", str, "models:/tlpipe@champion", "The model that stands for the source domain in "
              "source-free adaptation: models:/<name>@<alias> or models:/<name>/<version>, a tlpipe model in the "
              "registry; its training images are not needed."),
    Parameter("model", str, "models:/tlpipe@champion", "The registered model that predicts: models:/<name>@<alias> "
              "or models:/<name>/<version>."),
    Parameter("images", str, "", "The images to predict: imagefolder:<folder or s3://bucket/prefix>, every PNG and "
              "JPEG file in it at any depth; a file in a folder named after a class is also checked against it."),
    Parameter("blocks", list, [0, 1, 2, 3, 4], "The layer sweep's k values: how many of the backbone's blocks are "
              "copied from the source model (JSON list, e.g. [0,2,4])."),
]}

TRANSFER = ["source", "target", "target_labels_per_class", "target_val_per_class", "seed", "image_size", "backbone",
            "pretrained_weights", "strategy", "finetune_backbone_lr", "adapt_method", "adapt_bottleneck", "adapt_backbone_lr", "sdat_rho",
            "source_augment", "target_augment", "source_epochs", "finetune_epochs", "adapt_epochs", "batch_size", "lr",
            "select_by", "gate_alpha", "gate_margin", "min_accuracy", "model_name", "experiment", "publish_to", "checkpoint_root",
            "checkpoint_every", "nproc", "unseen_classes", "attributes"]
RETRAIN = TRANSFER
LAYER_SWEEP = ["source", "target", "target_labels_per_class", "target_val_per_class", "seed", "image_size", "backbone",
               "pretrained_weights", "blocks", "source_augment", "source_epochs", "finetune_epochs", "batch_size", "lr",
               "experiment", "checkpoint_root", "checkpoint_every", "nproc"]
PREDICT = ["model", "images", "experiment", "publish_to"]
SOURCE_FREE = ["source_model", "target", "target_labels_per_class", "target_val_per_class", "seed", "image_size", "strategy",
               "finetune_backbone_lr", "adapt_backbone_lr", "target_augment", "finetune_epochs", "adapt_epochs", "batch_size",
               "lr", "select_by", "gate_alpha", "gate_margin", "min_accuracy", "model_name", "experiment", "publish_to",
               "checkpoint_root", "checkpoint_every", "nproc"]


def signature(name: str, names: list[str], body: Callable[[SimpleNamespace], None], **defaults) -> Callable:
    """The pipeline function KFP compiles: `names` as its parameters (with `defaults` in place of the
    declared ones), documented by their meanings, calling `body` with the parameters as attributes."""
    unknown = set(defaults) - set(names)
    assert not unknown, f"defaults for parameters the pipeline does not take: {unknown}"

    def pipeline(*args):
        return body(SimpleNamespace(**dict(zip(names, args))))

    declared = [PARAMETERS[n] for n in names]
    pipeline.__name__ = pipeline.__qualname__ = name
    pipeline.__signature__ = inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=p.type,
                          default=defaults.get(p.name, p.default)) for p in declared])
    # KFP reads the arguments' descriptions from a Google-style docstring.
    pipeline.__doc__ = f"The {name} pipeline.\n\nArgs:\n" + "".join(f"    {p.name}: {p.meaning}\n" for p in declared)
    return pipeline
