"""The transfer pipeline: ingest -> pretrain -> {fine-tune, adapt, target-only} -> evaluate -> register.

Defaults run the built-in benchmark, digits -> digits-m, on a laptop CPU in a few minutes.
"""

from kfp import dsl

from components.adapt import adapt
from components.evaluate import evaluate
from components.finetune import finetune
from components.pretrain import pretrain
from components.register import register
from pipelines import closing_run, finetuned_model, ingest_data
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    """The transfer pipeline, for kfp.local (no cluster) or compiled for a Kubeflow cluster."""
    on = Placement(cluster)

    @dsl.pipeline(name="tlpipe-transfer", description="Train on a labelled source domain, transfer to a target domain, register the best model.")
    def transfer(
        source: str = "digits",
        target: str = "digits-m",
        target_labels_per_class: int = 10,
        target_val_per_class: int = 10,
        seed: int = 0,
        image_size: int = 32,
        backbone: str = "small-cnn",
        pretrained_weights: str = "",
        strategy: str = "full",
        adapt_method: str = "dann",
        adapt_bottleneck: int = 0,
        adapt_backbone_lr: float = 1.0,
        sdat_rho: float = 0.02,
        source_augment: str = "auto",
        target_augment: str = "auto",
        source_epochs: int = 30,
        finetune_epochs: int = 30,
        adapt_epochs: int = 120,
        batch_size: int = 64,
        lr: float = 0.01,
        select_by: str = "auto",
        gate_alpha: float = 0.05,
        gate_margin: float = 0.0,
        model_name: str = "tlpipe",
        experiment: str = "tlpipe",
        publish_to: str = "",
        checkpoint_root: str = on.checkpoint_root,
        checkpoint_every: int = 1,
        nproc: int = 0,
        unseen_classes: str = "",
        attributes: str = "",
    ):
        with closing_run(on, experiment):
            data = ingest_data(
                on,
                source=source, target=target, target_labels_per_class=target_labels_per_class,
                target_val_per_class=target_val_per_class, seed=seed,
                image_size=image_size, experiment=experiment, publish_to=publish_to,
                unseen_classes=unseen_classes, attributes=attributes,
            )
            source_model = on.train(
                pretrain,
                source_train=data.outputs["source_train"], source_val=data.outputs["source_val"], backbone=backbone, pretrained_weights=pretrained_weights,
                epochs=source_epochs, batch_size=batch_size, lr=lr, seed=seed, checkpoint_root=checkpoint_root,
                checkpoint_every=checkpoint_every, nproc=nproc, source_augment=source_augment, experiment=experiment,
            )
            finetuned = finetuned_model(
                on, data, strategy, source_model=source_model.outputs["model"], epochs=finetune_epochs,
                batch_size=batch_size, lr=lr, seed=seed, checkpoint_root=checkpoint_root,
                checkpoint_every=checkpoint_every, nproc=nproc, experiment=experiment, augment=target_augment,
            )
            target_only = on.train(
                finetune,
                source_model=source_model.outputs["model"],
                target_labelled=data.outputs["target_labelled"], target_val=data.outputs["target_val"], strategy="scratch",
                epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed, checkpoint_root=checkpoint_root,
                checkpoint_every=checkpoint_every, nproc=nproc, experiment=experiment,
                step_name="target-only", augment=target_augment,
            ).set_display_name("target-only")
            adapted = on.train(
                adapt,
                source_model=source_model.outputs["model"], source_train=data.outputs["source_train"],
                target_unlabelled=data.outputs["target_unlabelled"], target_labelled=data.outputs["target_labelled"],
                target_val=data.outputs["target_val"], method=adapt_method, bottleneck=adapt_bottleneck,
                backbone_lr=adapt_backbone_lr, sdat_rho=sdat_rho, epochs=adapt_epochs, finetune_epochs=finetune_epochs, batch_size=batch_size, lr=lr,
                seed=seed, checkpoint_root=checkpoint_root,
                checkpoint_every=checkpoint_every, nproc=nproc, source_augment=source_augment, experiment=experiment,
            )
            scores = on.score(
                evaluate,
                target_test=data.outputs["target_test"], target_val=data.outputs["target_val"],
                source_val=data.outputs["source_val"], target_unlabelled=data.outputs["target_unlabelled"],
                source_test=data.outputs["source_test"], select_by=select_by,
                source_only=source_model.outputs["model"],
                target_only=target_only.outputs["model"], finetuned=finetuned,
                adapted=adapted.outputs["model"], experiment=experiment,
            )
            on.score(
                register, cache=False,
                best_model=scores.outputs["best_model"], evaluation=scores.outputs["evaluation"],
                evaluation_report=scores.outputs["report"],
                target_test=data.outputs["target_test"], model_name=model_name, experiment=experiment,
                publish_to=publish_to, gate_alpha=gate_alpha, gate_margin=gate_margin,
            )

    return transfer


transfer = build()
