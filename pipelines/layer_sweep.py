"""The layer-transferability study (Yosinski et al. 2014): ingest -> pretrain -> for each k in
`blocks`, in parallel: the first k blocks copied and frozen (AnB), and copied and fine-tuned (AnB+) ->
one table and plot of target accuracy against k.
"""

from kfp import dsl

from components.layers import layer_sweep_report, layer_transfer
from components.pretrain import pretrain
from pipelines import closing_run, ingest_data
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    on = Placement(cluster)

    @dsl.pipeline(name="tlpipe-layer-sweep",
                  description="How transferable is each block: target accuracy against the number of blocks copied from the source model.")
    def layer_sweep(
        source: str = "digits",
        target: str = "digits-m",
        target_labels_per_class: int = 10,
        target_val_per_class: int = 10,
        seed: int = 0,
        image_size: int = 32,
        backbone: str = "small-cnn",
        pretrained_weights: str = "",
        blocks: list = [0, 1, 2, 3, 4],
        source_augment: str = "auto",
        source_epochs: int = 30,
        finetune_epochs: int = 30,
        batch_size: int = 64,
        lr: float = 0.01,
        experiment: str = "tlpipe",
        checkpoint_root: str = on.checkpoint_root,
        checkpoint_every: int = 1,
        nproc: int = 0,
    ):
        with closing_run(on, experiment):
            train = dict(batch_size=batch_size, lr=lr, seed=seed, checkpoint_root=checkpoint_root,
                         checkpoint_every=checkpoint_every, nproc=nproc, experiment=experiment)
            data = ingest_data(
                on,
                source=source, target=target, target_labels_per_class=target_labels_per_class,
                target_val_per_class=target_val_per_class, seed=seed,
                image_size=image_size, experiment=experiment, publish_to="", unseen_classes="",
                attributes="",
            )
            source_model = on.train(
                pretrain, source_train=data.outputs["source_train"], source_val=data.outputs["source_val"], backbone=backbone,
                pretrained_weights=pretrained_weights, epochs=source_epochs, source_augment=source_augment, **train,
            )
            with dsl.ParallelFor(items=blocks) as k:
                point = on.train(
                    layer_transfer, source_model=source_model.outputs["model"],
                    target_labelled=data.outputs["target_labelled"], target_test=data.outputs["target_test"],
                    blocks=k, epochs=finetune_epochs, **train,
                )
            on.light(
                layer_sweep_report, points=dsl.Collected(point.outputs["point"]), experiment=experiment,
            )

    return layer_sweep


layer_sweep = build()
