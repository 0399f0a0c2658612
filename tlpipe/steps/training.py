"""The training steps as their components call them: from the component's parameters (artifacts with a
`.path`) to the step function. One place for both ways a training step runs: in its KFP pod, and on rank 0
of a multi-node Kubeflow Trainer job (tlpipe.launch), whose parameters are the same."""

from tlpipe.tracking import current_pipeline_run
from tlpipe.train import TrainConfig


def pretrain(p: dict) -> dict:
    from tlpipe.steps.pretrain import pretrain

    config = TrainConfig.from_step(p, augment=p["source_augment"])
    return pretrain(p["source_train"].path, p["model"].path, p["backbone"], p["pretrained_weights"], config,
                    p["experiment"], current_pipeline_run(), p["source_val"].path)


def finetune(p: dict) -> dict:
    from tlpipe.steps.finetune import finetune

    config = TrainConfig.from_step(p)
    return finetune(p["source_model"].path, p["target_labelled"].path, p["model"].path, p["strategy"], config,
                    p["experiment"], current_pipeline_run(), p["step_name"],
                    p["source_train"].path if p.get("source_train") else "", p["target_val"].path)


def adapt(p: dict) -> dict:
    from tlpipe.steps.adapt import adapt

    config = TrainConfig.from_step(p, augment=p["source_augment"])
    return adapt(p["source_model"].path, p["source_train"].path, p["target_unlabelled"].path, p["model"].path,
                 p["method"], config, p["experiment"], current_pipeline_run(), p["target_labelled"].path,
                 p["finetune_epochs"], p["target_val"].path, p["target_augment"], p["finetune_backbone_lr"],
                 bool(p["pretrained_weights"]))


STEPS = {"pretrain": pretrain, "finetune": finetune, "adapt": adapt}
