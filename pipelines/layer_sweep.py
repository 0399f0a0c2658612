"""The layer-transferability study (Yosinski et al. 2014): ingest -> pretrain -> for each k in
`blocks`, in parallel: the first k blocks copied and frozen (AnB), and copied and fine-tuned (AnB+) ->
one table and plot of target accuracy against k.
"""

from kfp import dsl

from components.layers import layer_sweep_report, layer_transfer
from components.nodes import LAUNCHERS
from components.pretrain import pretrain
from pipelines import closing_run, ingest_data, parameters
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    on = Placement(cluster, LAUNCHERS)

    def steps(p):
        with closing_run(on, p.experiment):
            train = dict(batch_size=p.batch_size, lr=p.lr, seed=p.seed, checkpoint_root=p.checkpoint_root,
                         checkpoint_every=p.checkpoint_every, nproc=p.nproc, experiment=p.experiment)
            data = ingest_data(
                on,
                source=p.source, target=p.target, target_labels_per_class=p.target_labels_per_class,
                target_val_per_class=p.target_val_per_class, seed=p.seed,
                image_size=p.image_size, experiment=p.experiment, publish_to="", unseen_classes="",
                attributes="",
            )
            source_model = on.train(
                pretrain, source_train=data.outputs["source_train"], source_val=data.outputs["source_val"], backbone=p.backbone,
                pretrained_weights=p.pretrained_weights, epochs=p.source_epochs, source_augment=p.source_augment, **train,
            )
            with dsl.ParallelFor(items=p.blocks) as k:
                point = on.train(
                    layer_transfer, source_model=source_model.outputs["model"],
                    target_labelled=data.outputs["target_labelled"], target_test=data.outputs["target_test"],
                    blocks=k, epochs=p.finetune_epochs, **train,
                )
            on.light(
                layer_sweep_report, points=dsl.Collected(point.outputs["point"]), experiment=p.experiment,
            )

    pipeline = parameters.signature("layer_sweep", parameters.LAYER_SWEEP, steps, checkpoint_root=on.checkpoint_root)
    return dsl.pipeline(name="tlpipe-layer-sweep", description="How transferable is each block: target accuracy against the number of blocks copied from the source model.")(pipeline)


layer_sweep = build()
