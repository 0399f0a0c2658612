"""The transfer pipeline: ingest -> pretrain -> {fine-tune, adapt, target-only} -> evaluate -> register.

Defaults run the built-in benchmark, digits -> digits-m, on a laptop CPU in a few minutes.
"""

from kfp import dsl

from components.adapt import adapt
from components.evaluate import evaluate
from components.finetune import finetune
from components.nodes import LAUNCHERS
from components.pretrain import pretrain
from pipelines import closing_run, finetuned_model, gated_register, ingest_data, parameters
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    """The transfer pipeline, for kfp.local (no cluster) or compiled for a Kubeflow cluster."""
    on = Placement(cluster, LAUNCHERS)

    def steps(p):
        with closing_run(on, p.experiment):
            data = ingest_data(
                on,
                source=p.source, target=p.target, target_labels_per_class=p.target_labels_per_class,
                target_val_per_class=p.target_val_per_class, seed=p.seed,
                image_size=p.image_size, experiment=p.experiment, publish_to=p.publish_to,
                unseen_classes=p.unseen_classes, attributes=p.attributes,
            )
            source_model = on.train(
                pretrain,
                source_train=data.outputs["source_train"], source_val=data.outputs["source_val"], backbone=p.backbone, pretrained_weights=p.pretrained_weights,
                epochs=p.source_epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                checkpoint_every=p.checkpoint_every, nproc=p.nproc, source_augment=p.source_augment, experiment=p.experiment,
            )
            finetuned = finetuned_model(
                on, data, p.strategy, source_model=source_model.outputs["model"], epochs=p.finetune_epochs,
                batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                checkpoint_every=p.checkpoint_every, nproc=p.nproc, experiment=p.experiment, augment=p.target_augment,
                backbone_lr=p.finetune_backbone_lr,
            )
            target_only = on.train(
                finetune,
                source_model=source_model.outputs["model"],
                target_labelled=data.outputs["target_labelled"], target_val=data.outputs["target_val"], strategy="scratch",
                epochs=p.finetune_epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                checkpoint_every=p.checkpoint_every, nproc=p.nproc, experiment=p.experiment,
                step_name="target-only", augment=p.target_augment,
            ).set_display_name("target-only")
            adapted = on.train(
                adapt,
                source_model=source_model.outputs["model"], source_train=data.outputs["source_train"],
                target_unlabelled=data.outputs["target_unlabelled"], target_labelled=data.outputs["target_labelled"],
                target_val=data.outputs["target_val"], method=p.adapt_method, bottleneck=p.adapt_bottleneck,
                backbone_lr=p.adapt_backbone_lr, sdat_rho=p.sdat_rho, epochs=p.adapt_epochs, finetune_epochs=p.finetune_epochs, batch_size=p.batch_size, lr=p.lr,
                seed=p.seed, checkpoint_root=p.checkpoint_root,
                checkpoint_every=p.checkpoint_every, nproc=p.nproc, source_augment=p.source_augment, experiment=p.experiment,
                target_augment=p.target_augment, finetune_backbone_lr=p.finetune_backbone_lr,
                pretrained_weights=p.pretrained_weights,
            )
            scores = on.score(
                evaluate,
                target_test=data.outputs["target_test"], target_val=data.outputs["target_val"],
                source_val=data.outputs["source_val"], target_unlabelled=data.outputs["target_unlabelled"],
                source_test=data.outputs["source_test"], select_by=p.select_by,
                source_only=source_model.outputs["model"],
                target_only=target_only.outputs["model"], finetuned=finetuned,
                adapted=adapted.outputs["model"], experiment=p.experiment,
            )
            gated_register(on, p, data, scores)

    pipeline = parameters.signature("transfer", parameters.TRANSFER, steps, checkpoint_root=on.checkpoint_root)
    return dsl.pipeline(name="tlpipe-transfer", description="Train on a labelled source domain, transfer to a target domain, register the best model.")(pipeline)


transfer = build()
