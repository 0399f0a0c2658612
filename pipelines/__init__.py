"""KFP pipelines (DAGs of the components in components/), by the name users give on the command line.

Each module has build(cluster=None): the pipeline for kfp.local, or compiled for a Kubeflow cluster.
Every pipeline's steps sit inside `closing_run`, and every pipeline reads its data through `ingest_data`.
"""


def registry() -> dict:
    from pipelines import layer_sweep, retrain, transfer

    return {"transfer": transfer.build, "retrain": retrain.build, "layer-sweep": layer_sweep.build}


def ingest_data(on, **arguments):
    """The ingest task, cached on what the data_version step (never cached) finds the data to be: a rerun
    on unchanged data reuses the splits, and with them every cached step after ingest; a changed folder
    or S3 prefix gives a new version and misses the cache."""
    from components.ingest import data_version, ingest

    version = on.light(data_version, cache=False, source=arguments["source"], target=arguments["target"],
                       attributes=arguments["attributes"])
    return on.light(ingest, data_version=version.output, **arguments)


def closing_run(on, experiment):
    """The exit handler around a pipeline's steps: close_run ends the MLflow parent run, FINISHED or
    FAILED, whatever the steps did. (Kubeflow allows no pipeline outputs from inside it: tlpipe.local
    finds the outputs in the run's folder.)"""
    from kfp import dsl

    from components.close_run import close_run

    return dsl.ExitHandler(on.light(close_run, cache=False, experiment=experiment).set_display_name("close-run"))
