"""The finetune step (and target-only, its `scratch` strategy): the source model on labelled target images."""

from tlpipe import distributed, tracking
from tlpipe.data import load_dataset
from tlpipe.errors import TlpipeError
from tlpipe.methods import finetune as finetuning
from tlpipe.models import load_model, read_weights
from tlpipe.steps.common import TRANSFER_SETTINGS, augmenting, checkpointed, config_params, save_trained, timed, training_run
from tlpipe.train import TrainConfig


@timed
def finetune(
    source_model: str,
    target_labelled: str,
    out: str,
    strategy: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
    step_name: str = "finetune",
    source_train: str = "",
    validation: str = "",
) -> dict:
    """Fine-tunes on the labelled target images; multitask and zero-shot also train on `source_train`.
    `validation` (target_val) is scored every epoch."""
    uses_source = finetuning.uses_source(strategy)
    if uses_source and not source_train:
        raise TlpipeError(f"fine-tuning strategy '{strategy}' trains on the source images too; give it source_train.")
    model, model_meta = load_model(source_model)
    data, meta = load_dataset(target_labelled)
    source, source_meta = load_dataset(source_train) if uses_source else (None, None)
    # Target-only starts where the source model started: from its pretrained weights, with a new head.
    pretrained = model_meta.get("pretrained_weights", "") if strategy == "scratch" else ""
    initial = read_weights(pretrained) if pretrained else None
    val, val_meta = load_dataset(validation) if validation else (None, None)
    config = checkpointed(augmenting(config, meta), pipeline_run, step_name)
    params = {"strategy": strategy, **config_params(config, TRANSFER_SETTINGS)}
    # The pipeline's strategy is the finetune step's; target-only's "scratch" describes only itself.
    shared = {"strategy": strategy, "finetune_epochs": config.epochs, "target_augment": config.augment, "lr": config.lr,
              "batch_size": config.batch_size} if step_name == "finetune" else None
    inputs = [(meta, target_labelled, "training"), (source_meta, source_train, "training"), (val_meta, validation, "validation")]
    with training_run(step_name, config, experiment, pipeline_run, params, shared, inputs):
        tuned = distributed.run(config.nproc, finetuning.finetune, model, data, strategy, config,
                                log=tracking.EpochLogger(step_name, config.epochs, val), source=source,
                                attributes=meta.get("attributes", {}).get("table"), initial_weights=initial,
                                initial_source=pretrained)
        method = "target-only" if strategy == "scratch" else f"finetune:{strategy}"
        return save_trained(out, tuned, data, method=method, trained_on=meta["content_hash"],
                            pretrained_weights=model_meta.get("pretrained_weights", ""))
