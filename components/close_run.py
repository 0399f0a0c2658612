from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def close_run(experiment: str, status: dsl.PipelineTaskFinalStatus):
    """The pipelines' exit handler: ends the pipeline run's MLflow parent run FINISHED when every step
    succeeded, FAILED (KILLED when cancelled) otherwise, so no failed run stays RUNNING."""
    from tlpipe import tracking

    closed = tracking.close_pipeline_run(experiment, tracking.current_pipeline_run(), status.state)
    print(f"pipeline {status.state.lower()}: MLflow run of experiment {experiment} marked {closed}", flush=True)
