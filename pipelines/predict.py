"""Batch prediction: a registered model (the champion by default) over a folder of images, local or S3
-> predictions.parquet and label-free quality signals.

It reads the image files as they are, in batches, without ingest's splits and shards: nothing is
trained or selected, and copying a million photos into shards first would double the reading.
"""

from kfp import dsl

from components.predict import predict
from pipelines import closing_run, parameters
from tlpipe.cluster import Cluster, Placement


def build(cluster: Cluster | None = None):
    """The predict pipeline, for kfp.local (no cluster) or compiled for a Kubeflow cluster."""
    on = Placement(cluster)

    def steps(p):
        with closing_run(on, p.experiment):
            # The model behind an alias changes and so may the folder: never cached.
            on.score(predict, cache=False, model=p.model, images=p.images, experiment=p.experiment,
                     publish_to=p.publish_to)

    pipeline = parameters.signature("predict", parameters.PREDICT, steps)
    return dsl.pipeline(name="tlpipe-predict", description="Predict a folder of images with a registered model.")(pipeline)


predict_pipeline = build()
