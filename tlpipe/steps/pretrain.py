"""The pretrain step: backbone + head trained on the labelled source domain."""

import mlflow
import torch

from tlpipe import distributed, tracking
from tlpipe.data import load_dataset
from tlpipe.distributed import device
from tlpipe.methods import supervised
from tlpipe.models import Classifier, ModelSpec, read_weights
from tlpipe.steps.common import augmenting, checkpointed, config_params, save_trained, timed, training_run
from tlpipe.train import TrainConfig


@timed
def pretrain(
    source_train: str,
    out: str,
    backbone: str,
    pretrained_weights: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
    validation: str = "",
) -> dict:
    """Trains backbone + head on the source; `validation` (source_val) is scored every epoch."""
    data, meta = load_dataset(source_train)
    val, val_meta = load_dataset(validation) if validation else (None, None)
    config = checkpointed(augmenting(config, meta), pipeline_run, "pretrain")
    # What the parent run compares pipeline runs by; the step run has its own plain-named copies.
    shared = {"backbone": backbone, "pretrained_weights": pretrained_weights or "none", "source_epochs": config.epochs,
              "lr": config.lr, "batch_size": config.batch_size, "source_augment": config.augment}
    weights = read_weights(pretrained_weights) if pretrained_weights else None
    with training_run("pretrain", config, experiment, pipeline_run, {**shared, **config_params(config)}, shared,
                      [(meta, source_train, "training"), (val_meta, validation, "validation")]):
        spec = ModelSpec(backbone=backbone, classes=data.classes, input_size=data.images.shape[1])
        torch.manual_seed(config.seed)
        model = Classifier(spec, weights, pretrained_weights)
        final = distributed.run(config.nproc, supervised.pretrain, model, data, config,
                                log=tracking.EpochLogger("pretrain", config.epochs, val))
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
        return save_trained(out, model, data, method="source-only", trained_on=meta["content_hash"],
                            device=str(device()), pretrained_weights=pretrained_weights)
