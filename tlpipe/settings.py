"""Where tlpipe keeps things when no service is configured (the embedded default).

Everything lives under $TLPIPE_HOME (default ./.tlpipe): MLflow on SQLite, MLflow artifacts and the
KFP pipeline root. The standard variables (MLFLOW_TRACKING_URI, ...) win when set.
"""

import os
from pathlib import Path

# The pipeline run a step belongs to: set by `tlpipe run` for kfp.local, and on a cluster from the pod's
# `pipeline/runid` label (tlpipe.cluster), never passed as a component input (tlpipe.tracking says why).
RUN_ENV = "TLPIPE_PIPELINE_RUN"


def cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit,
    which os.cpu_count() and the affinity do not show)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return count


def home() -> Path:
    return Path(os.environ.get("TLPIPE_HOME", ".tlpipe")).resolve()


def embedded_tracking_uri() -> str:
    return f"sqlite:///{home() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def artifact_location() -> str | None:
    """Artifact root for new experiments; None lets a tracking server choose its own."""
    # Compare URIs rather than test the variable: mlflow.set_tracking_uri() exports it too.
    if tracking_uri() != embedded_tracking_uri():
        return None
    return (home() / "mlartifacts").as_uri()


def pipeline_root() -> Path:
    return home() / "pipeline-root"


def checkpoint_root() -> Path:
    """Where training steps checkpoint when the pipeline's checkpoint_root is empty."""
    return home() / "checkpoints"
