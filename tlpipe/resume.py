"""What a local run keeps so that `tlpipe run --resume RUN_ID` can finish it, and when that is given up.

A local run that is interrupted (Ctrl-C, SIGTERM), killed outright or failed keeps its KFP outputs
(pipeline-root/<run>: the finished tasks' artifacts and kfp.local's cache of them) and its checkpoints.
A resume runs the same pipeline with the same parameters under the same run id: the tasks that finished
are cache hits, the step that was stopped restores its last checkpoint, and the run's MLflow parent run
goes on, RUNNING again. Checkpoints that nobody resumed are removed after KEEP_DAYS.
"""

import json
import re
import shutil
import time
from pathlib import Path

from tlpipe import settings
from tlpipe.errors import TlpipeError

RECORD = "tlpipe-run.json"  # in pipeline-root/<run>: the pipeline and the parameters it was given
CACHE = ".kfp-cache"  # in pipeline-root/<run>: kfp.local's cache of the run's finished tasks
KEEP_DAYS = 7


def record(run_root: Path, pipeline: str, given: dict[str, str]) -> None:
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / RECORD).write_text(json.dumps({"pipeline": pipeline, "parameters": given}))


def recorded(run_id: str) -> tuple[str, dict[str, str]]:
    """The pipeline and the parameters of the run to resume, as it was started."""
    if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", run_id):
        raise TlpipeError(f"'{run_id}' is not a run id (one such as transfer-20261202-183636-5906b4, "
                          "as an interrupted run prints it and its log is named).")
    path = settings.pipeline_root() / run_id / RECORD
    try:
        saved = json.loads(path.read_text())
        return saved["pipeline"], saved["parameters"]
    except FileNotFoundError:
        raise TlpipeError(f"run {run_id} cannot be resumed: {settings.pipeline_root()} holds no run of that id (runs "
                          "are resumed on the machine and with the TLPIPE_HOME they ran with).") from None
    except (OSError, ValueError, KeyError) as error:
        raise TlpipeError(f"run {run_id} cannot be resumed: its record {path} is unreadable ({error}).") from None


def attempts(run_root: Path) -> list[Path]:
    """The run's kfp.local run folders, oldest first: one per attempt (a resume adds one, and its cache hits
    point into the earlier ones); their names end in the time they started."""
    return sorted(d for d in run_root.iterdir() if d.is_dir() and d.name != CACHE)


def check_data_unchanged(run_id: str, now: str) -> None:
    """Refuses a resume once the data the run started on has changed (`now`: tlpipe.data.spec.data_versions
    as it reads today): its checkpoints and finished steps belong to the images it split then."""
    answers = [a / "data-version" / "executor_output.json" for a in attempts(settings.pipeline_root() / run_id)]
    answers = [answer for answer in answers if answer.is_file()]
    if not answers:  # stopped before it looked
        return
    then = json.loads(answers[0].read_text())["parameterValues"]["Output"]
    if then != now:
        raise TlpipeError(f"run {run_id} cannot be resumed: its data changed since it started (then {then}, now "
                          f"{now}); start a new run on the data as it is.")


LOCAL_RUN_ID = re.compile(r"[\w-]+-\d{8}-\d{6}-[0-9a-f]{6}")  # how tlpipe.local names a run


def expire_checkpoints(*checkpoint_roots: Path, days: float = KEEP_DAYS) -> list[str]:
    """Removes the checkpoints of local runs not touched for `days` (interrupted and never resumed) under
    each root; their names. Only folders named as local runs are: a root may be a folder of the user's."""
    cutoff, expired = time.time() - days * 86400, []
    runs = [p for root in checkpoint_roots if root.is_dir() for p in root.iterdir()
            if p.is_dir() and LOCAL_RUN_ID.fullmatch(p.name)]
    for run in sorted(runs):
        if max((p.stat().st_mtime for p in [run, *run.rglob("*")]), default=0) < cutoff:
            shutil.rmtree(run, ignore_errors=True)
            expired.append(run.name)
    return expired
