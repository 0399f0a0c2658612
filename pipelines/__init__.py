"""KFP pipelines (DAGs of the components in components/), by the name users give on the command line.

Each module has build(cluster=None): the pipeline for kfp.local, or compiled for a Kubeflow cluster; the
command line finds them by pyproject's `tlpipe.pipelines` entry points (tlpipe.cluster.pipelines).
Every pipeline's steps sit inside `closing_run`, every pipeline reads its data through `ingest_data`,
and those that train register through `gated_register`.
"""


def ingest_data(on, **arguments):
    """The ingest task, cached on what the data_version step (never cached) finds the data to be: a rerun
    on unchanged data reuses the splits, and with them every cached step after ingest; a changed folder
    or S3 prefix gives a new version and misses the cache."""
    from components.ingest import data_version, ingest

    version = on.light(data_version, cache=False, source=arguments["source"], target=arguments["target"],
                       attributes=arguments["attributes"])
    return on.ingest(ingest, data_version=version.output, **arguments)


def closing_run(on, experiment):
    """The exit handler around a pipeline's steps: close_run ends the MLflow parent run, FINISHED or
    FAILED, whatever the steps did. (Kubeflow allows no pipeline outputs from inside it: tlpipe.local
    finds the outputs in the run's folder.)"""
    from kfp import dsl

    from components.close_run import close_run

    return dsl.ExitHandler(on.light(close_run, cache=False, experiment=experiment).set_display_name("close-run"))


def finetuned_model(on, data, strategy, **arguments):
    """The finetune task's model. On a cluster only the strategies that also train on the source (multitask,
    zero-shot) get source_train, so the others never download the source images. kfp.local cannot take a
    model out of a branch (dsl.OneOf of artifacts), and a local artifact is a path that nothing copies, so
    locally finetune always gets the path and reads it only for those strategies (tlpipe.steps.finetune)."""
    from kfp import dsl

    from components.finetune import finetune, strategy_uses_source

    common = dict(target_labelled=data.outputs["target_labelled"], target_val=data.outputs["target_val"],
                  strategy=strategy, step_name="finetune", **arguments)
    if on.cluster is None:
        return on.train(finetune, source_train=data.outputs["source_train"], **common).set_display_name(
            "finetune").outputs["model"]
    uses_source = on.light(strategy_uses_source, strategy=strategy).set_display_name("strategy-uses-source")
    with dsl.If(uses_source.output == True, "with-source"):  # noqa: E712 (a KFP condition, not a Python test)
        joint = on.train(finetune, source_train=data.outputs["source_train"], **common).set_display_name("finetune")
    with dsl.Else():
        alone = on.train(finetune, **common).set_display_name("finetune")
    return dsl.OneOf(joint.outputs["model"], alone.outputs["model"])


def gated_register(on, p, data, scores):
    """The register task after an evaluate task (`scores`): the selected model registered, the champion
    alias moved only through the gate with the pipeline's parameters `p`. Never cached: the alias moves
    behind the same name."""
    from components.register import register

    return on.score(
        register, cache=False,
        best_model=scores.outputs["best_model"], evaluation=scores.outputs["evaluation"],
        evaluation_report=scores.outputs["report"],
        target_test=data.outputs["target_test"], model_name=p.model_name, experiment=p.experiment,
        publish_to=p.publish_to, gate_alpha=p.gate_alpha, gate_margin=p.gate_margin,
        min_accuracy=p.min_accuracy,
    )
