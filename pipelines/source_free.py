"""Source-free adaptation: a registered model + target images -> {SHOT, fine-tune, target-only} -> evaluate
-> gated register.

For a model whose training images you do not have (a vendor's, another team's, one trained under a data
agreement): no source domain is ingested or read. The model is the source-only baseline; SHOT adapts it
from the unlabelled target images, fine-tuning from it uses the k labelled ones, and target-only trains
on those alone; evaluate chooses on target validation data and register's gate decides the champion.
"""

from kfp import dsl

from components.adapt import adapt
from components.champion import registered_model
from components.evaluate import evaluate
from components.finetune import finetune
from components.nodes import LAUNCHERS
from pipelines import closing_run, gated_register, ingest_data, parameters
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    """The source-free pipeline, for kfp.local (no cluster) or compiled for a Kubeflow cluster."""
    on = Placement(cluster, LAUNCHERS)

    def steps(p):
        with closing_run(on, p.experiment):
            data = ingest_data(
                on,
                source="", target=p.target, target_labels_per_class=p.target_labels_per_class,
                target_val_per_class=p.target_val_per_class, seed=p.seed, image_size=p.image_size,
                experiment=p.experiment, publish_to=p.publish_to, unseen_classes="", attributes="",
            )
            # The model behind an alias changes: never cached.
            given = on.light(registered_model, cache=False, source_model=p.source_model, experiment=p.experiment,
                             target_labelled=data.outputs["target_labelled"]).set_display_name("source-model")
            train = dict(batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                         checkpoint_every=p.checkpoint_every, nproc=p.nproc, experiment=p.experiment)
            labelled = dict(target_labelled=data.outputs["target_labelled"], target_val=data.outputs["target_val"],
                            epochs=p.finetune_epochs, augment=p.target_augment, **train)
            # No source_train: fine-tuning strategies that train on the source are refused before the run.
            finetuned = on.train(finetune, source_model=given.outputs["model"], strategy=p.strategy, step_name="finetune",
                                 backbone_lr=p.finetune_backbone_lr, **labelled).set_display_name("finetune")
            target_only = on.train(finetune, source_model=given.outputs["model"], strategy="scratch",
                                   step_name="target-only", **labelled).set_display_name("target-only")
            adapted = on.train(
                adapt,
                source_model=given.outputs["model"], source_train=data.outputs["source_train"],  # empty, never read
                target_unlabelled=data.outputs["target_unlabelled"], target_labelled=data.outputs["target_labelled"],
                target_val=data.outputs["target_val"], method="shot", backbone_lr=p.adapt_backbone_lr,
                epochs=p.adapt_epochs, finetune_epochs=p.finetune_epochs, source_augment="none",
                target_augment=p.target_augment, **train,
            )
            scores = on.score(
                evaluate,
                target_test=data.outputs["target_test"], target_val=data.outputs["target_val"],
                source_val=data.outputs["source_val"], target_unlabelled=data.outputs["target_unlabelled"],
                source_test=data.outputs["source_test"], select_by=p.select_by, source_only=given.outputs["model"],
                target_only=target_only.outputs["model"], finetuned=finetuned.outputs["model"],
                adapted=adapted.outputs["model"], experiment=p.experiment,
            )
            gated_register(on, p, data, scores)

    pipeline = parameters.signature("source-free", parameters.SOURCE_FREE, steps, checkpoint_root=on.checkpoint_root,
                                    adapt_epochs=30)
    return dsl.pipeline(name="tlpipe-source-free",
                        description="Adapt a registered model to a target domain without its source images (SHOT); "
                                    "register the best model through the gate.")(pipeline)


source_free = build()
