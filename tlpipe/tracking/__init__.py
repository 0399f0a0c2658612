"""MLflow tracking: one parent run per pipeline run and one nested run per step.

Steps run in separate processes (and on a cluster, separate pods), so they find their parent run by
the tag `tlpipe.pipeline_run` instead of sharing an active run. The pipeline run's id reaches a step
through the environment (RUN_ENV), never as a component input: an input that changes every run would
make every cache key unique. With MLFLOW_TRACKING_URI unset, everything goes to the embedded default
under $TLPIPE_HOME (tlpipe.settings).

Where Kubeflow Pipelines' own MLflow integration runs (KFP 2.17 with the MLflow plugin), it creates the
parent run and one nested run per task and hands the task's run to the pod as MLFLOW_RUN_ID: steps then
log into that run and summarise into its parent instead of opening their own.

The parent run is what a person compares runs by: the shared parameters (source, target, backbone, ...),
each model's validation and test accuracy, the gate's verdict and the report. Step runs hold their own
parameters under plain names, their models (LoggedModels) and the datasets they read (`log_split`).

The package: `runs` (parent and step runs, closing them), `datasets` (splits among a run's inputs),
`progress` (the per-epoch logger) and `health` (the tracking server's reachability).
"""

from tlpipe.tracking.datasets import SplitDataset, artifact_uri, dataset_hashes, log_split, log_splits_to_parent
from tlpipe.tracking.health import check_reachable
from tlpipe.tracking.progress import EpochLogger, validation_accuracy
from tlpipe.tracking.runs import (
                                  KFP_RUN_ENV,
                                  PIPELINE_RUN_TAG,
                                  ROLE_TAG,
                                  RUN_ENV,
                                  close_abandoned_runs,
                                  close_pipeline_run,
                                  code_version,
                                  configure,
                                  current_parent,
                                  current_pipeline_run,
                                  experiment_id,
                                  kfp_step_run,
                                  log_to_parent,
                                  parent_of,
                                  parent_run_id,
                                  pipeline_run_ids,
                                  reopen_pipeline_run,
                                  run_link,
                                  step_run,
)

__all__ = ["EpochLogger", "KFP_RUN_ENV", "PIPELINE_RUN_TAG", "ROLE_TAG", "RUN_ENV", "SplitDataset", "artifact_uri",
           "check_reachable", "close_abandoned_runs", "close_pipeline_run", "code_version", "configure", "current_parent", "current_pipeline_run",
           "dataset_hashes", "experiment_id", "kfp_step_run", "log_split", "log_splits_to_parent", "log_to_parent",
           "parent_of", "parent_run_id", "pipeline_run_ids", "reopen_pipeline_run", "run_link", "step_run", "validation_accuracy"]
