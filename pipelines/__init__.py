"""KFP pipelines (DAGs of the components in components/), by the name users give on the command line.

Each module has build(cluster=None): the pipeline for kfp.local, or compiled for a Kubeflow cluster.
"""


def registry() -> dict:
    from pipelines import layer_sweep, retrain, transfer

    return {"transfer": transfer.build, "retrain": retrain.build, "layer-sweep": layer_sweep.build}
