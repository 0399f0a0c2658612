"""Scheduled retraining: fresh target data -> {fine-tune, adapt} from the champion -> evaluate -> gated register.

It ingests the current target data, starts from the registry's `champion` (or trains a source model
when there is none), fine-tunes and adapts from it, scores both against the champion on the same
fresh target test split, and registers the better candidate; register's gate promotes it only when
it beats the champion there.
"""

from kfp import dsl

from components.adapt import adapt
from components.champion import champion
from components.evaluate import evaluate_retrain
from components.nodes import LAUNCHERS
from pipelines import closing_run, finetuned_model, gated_register, ingest_data, parameters
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    """The retrain pipeline, for kfp.local (no cluster) or compiled for a Kubeflow cluster."""
    on = Placement(cluster, LAUNCHERS)

    def steps(p):
        with closing_run(on, p.experiment):
            train = dict(batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                         checkpoint_every=p.checkpoint_every, nproc=p.nproc, experiment=p.experiment)
            data = ingest_data(
                on,
                source=p.source, target=p.target, target_labels_per_class=p.target_labels_per_class,
                target_val_per_class=p.target_val_per_class, seed=p.seed,
                image_size=p.image_size, experiment=p.experiment, publish_to=p.publish_to,
                unseen_classes=p.unseen_classes, attributes=p.attributes,
            )
            # The champion changes behind the same name: never cached.
            start = on.train(
                champion,
                source_train=data.outputs["source_train"], model_name=p.model_name, backbone=p.backbone,
                pretrained_weights=p.pretrained_weights, epochs=p.source_epochs, source_augment=p.source_augment, **train,
            ).set_caching_options(False)
            finetuned = finetuned_model(on, data, p.strategy, source_model=start.outputs["model"],
                                        epochs=p.finetune_epochs, augment=p.target_augment,
                                        backbone_lr=p.finetune_backbone_lr, **train)
            adapted = on.train(
                adapt,
                source_model=start.outputs["model"], source_train=data.outputs["source_train"],
                target_unlabelled=data.outputs["target_unlabelled"], target_labelled=data.outputs["target_labelled"],
                target_val=data.outputs["target_val"], method=p.adapt_method, bottleneck=p.adapt_bottleneck,
                backbone_lr=p.adapt_backbone_lr, sdat_rho=p.sdat_rho, epochs=p.adapt_epochs, finetune_epochs=p.finetune_epochs, source_augment=p.source_augment,
                target_augment=p.target_augment, finetune_backbone_lr=p.finetune_backbone_lr,
                pretrained_weights=p.pretrained_weights,
                **train,
            )
            scores = on.score(
                evaluate_retrain,
                target_test=data.outputs["target_test"], target_val=data.outputs["target_val"],
                source_val=data.outputs["source_val"], target_unlabelled=data.outputs["target_unlabelled"],
                source_test=data.outputs["source_test"], select_by=p.select_by,
                start_model=start.outputs["model"],
                finetuned=finetuned, adapted=adapted.outputs["model"], experiment=p.experiment,
            )
            gated_register(on, p, data, scores)

    pipeline = parameters.signature("retrain", parameters.RETRAIN, steps, checkpoint_root=on.checkpoint_root, adapt_epochs=60)
    return dsl.pipeline(name="tlpipe-retrain", description="Retrain from the champion on fresh target data; promote only through the gate.")(pipeline)


retrain = build()
