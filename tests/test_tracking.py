"""The MLflow runs of a pipeline run: one nested run per step, taken up again by a retried step, and
closed by the exit handler whatever happened; the pipeline run's id comes from the environment."""

import os
import subprocess
import sys
import time

import mlflow
import pytest
from helpers import free_port

from tlpipe import tracking
from tlpipe.errors import TlpipeError
from tlpipe.lifetime import PARENT_ENV


@pytest.fixture
def client(tlpipe_home):
    yield tracking.configure()
    mlflow.set_tracking_uri(None)


def runs(client, role: str) -> list:
    experiment = client.get_experiment_by_name("runs").experiment_id
    return client.search_runs([experiment], f"tags.`tlpipe.role` = '{role}'")


def test_the_pipeline_run_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "9f1c")
    assert tracking.current_pipeline_run() == "9f1c"
    monkeypatch.delenv("TLPIPE_PIPELINE_RUN")
    with pytest.raises(TlpipeError, match="TLPIPE_PIPELINE_RUN is not set"):
        tracking.current_pipeline_run()


def test_a_retried_step_goes_on_in_the_run_its_failed_attempt_opened(client):
    with pytest.raises(RuntimeError):
        with tracking.step_run("pretrain", "runs", "run-1", {"epochs": 3}):
            mlflow.log_metric("train_loss", 2.0, step=0)
            raise RuntimeError("preempted")
    [failed] = runs(client, "step")
    assert failed.info.status == "FAILED"
    with tracking.step_run("pretrain", "runs", "run-1", {"epochs": 3}):
        mlflow.log_metric("train_loss", 1.0, step=1)
    [step] = runs(client, "step")
    assert step.info.run_id == failed.info.run_id and step.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(step.info.run_id, "train_loss")] == [2.0, 1.0]
    # Another step, or the same step of another pipeline run, has a run of its own.
    with tracking.step_run("adapt", "runs", "run-1", {}):
        pass
    with tracking.step_run("pretrain", "runs", "run-2", {"epochs": 3}):
        pass
    assert len(runs(client, "step")) == 3 and len(runs(client, "pipeline")) == 2


@pytest.mark.parametrize("final_state, status", [("SUCCEEDED", "FINISHED"), ("COMPLETE", "FINISHED"),
                                                 ("FAILED", "FAILED"), ("CANCELED", "KILLED"), ("SYSTEM_ERROR", "FAILED")])
def test_the_exit_handler_closes_the_parent_run_and_fails_steps_left_open(client, final_state, status):
    with tracking.step_run("ingest", "runs", "run-1", {}):
        pass
    client.update_run(runs(client, "step")[0].info.run_id, status="RUNNING")  # as a pod killed mid-step leaves it
    with tracking.step_run("other", "runs", "run-2", {}):  # another pipeline run, not closed here
        pass
    assert tracking.close_pipeline_run("runs", "run-1", final_state) == status
    parents = {r.data.tags["tlpipe.pipeline_run"]: r.info.status for r in runs(client, "pipeline")}
    assert parents == {"run-1": status, "run-2": "RUNNING"}
    steps = {r.data.tags["tlpipe.pipeline_run"]: r.info.status for r in runs(client, "step")}
    assert steps == {"run-1": "FAILED", "run-2": "FINISHED"}


def test_the_next_run_closes_the_runs_of_a_killed_tlpipe_run_and_only_those(client, monkeypatch):
    """A `tlpipe run` killed outright (SIGKILL) leaves its runs RUNNING; the next run on this machine ends
    them KILLED (open steps FAILED). Runs whose owner lives, runs of another machine and cluster runs
    (no owner) stay as they are."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {"killed": str(dead.pid), "alive": str(os.getpid())}
    for name, pid in owners.items():
        monkeypatch.setenv(PARENT_ENV, pid)
        with tracking.step_run("pretrain", "runs", name, {}):
            pass
    monkeypatch.delenv(PARENT_ENV)
    with tracking.step_run("pretrain", "runs", "cluster", {}):
        pass
    with tracking.step_run("pretrain", "runs", "elsewhere", {}):
        pass
    parent = {r.data.tags["tlpipe.pipeline_run"]: r for r in runs(client, "pipeline")}
    assert parent["killed"].data.tags["tlpipe.owner"].split(":")[1] == str(dead.pid)
    assert "tlpipe.owner" not in parent["cluster"].data.tags
    client.set_tag(parent["elsewhere"].info.run_id, "tlpipe.owner", "another-host:1:0")
    for run in runs(client, "step"):  # each killed inside its step
        client.update_run(run.info.run_id, status="RUNNING")

    assert tracking.close_abandoned_runs() == ["killed"]
    statuses = {(r.data.tags["tlpipe.pipeline_run"], r.data.tags["tlpipe.role"]): r.info.status
                for role in ("pipeline", "step") for r in runs(client, role)}
    assert statuses == {("killed", "pipeline"): "KILLED", ("killed", "step"): "FAILED",
                        **{(name, role): "RUNNING" for name in ("alive", "cluster", "elsewhere")
                           for role in ("pipeline", "step")}}
    assert tracking.close_abandoned_runs() == []


def test_a_resumed_run_is_running_again_under_its_new_owner_and_a_finished_or_live_one_is_refused(client, monkeypatch):
    for name in ("stopped", "finished", "live"):
        with tracking.step_run("pretrain", "runs", name, {}):
            pass
    parent = {r.data.tags["tlpipe.pipeline_run"]: r.info.run_id for r in runs(client, "pipeline")}
    client.set_terminated(parent["stopped"], "KILLED")
    client.set_terminated(parent["finished"], "FINISHED")
    client.set_tag(parent["live"], "tlpipe.owner", "another-host:41:0")

    tracking.reopen_pipeline_run("stopped")
    reopened = client.get_run(parent["stopped"])
    assert reopened.info.status == "RUNNING"
    assert reopened.data.tags["tlpipe.owner"].split(":")[1] == str(os.getpid())
    with pytest.raises(TlpipeError, match="run finished finished; there is nothing to resume"):
        tracking.reopen_pipeline_run("finished")
    with pytest.raises(TlpipeError, match="run live is still running \\(on another-host, process 41\\)"):
        tracking.reopen_pipeline_run("live")
    tracking.reopen_pipeline_run("never-reached-mlflow")  # nothing to reopen, nothing to refuse


def test_steps_log_into_the_runs_kubeflows_mlflow_integration_created(client, tmp_path, monkeypatch):
    """KFP 2.17's MLflow plugin creates the pipeline's parent run and a nested run per task, and hands
    the task's run to the pod as MLFLOW_RUN_ID: the step logs there instead of opening runs of its own."""
    from tlpipe.steps.common import SPLITS
    from tlpipe.steps.ingest import ingest

    experiment = client.create_experiment("kfp-chosen")
    kfp_parent = client.create_run(experiment, run_name="kfp-pipeline-run").info.run_id
    kfp_task = client.create_run(experiment, run_name="ingest", tags={"mlflow.parentRunId": kfp_parent}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", kfp_task)
    out = {name: str(tmp_path / name) for name in SPLITS}
    facts = ingest("digits", "digits-m", 5, 0, 32, out, "tlpipe", "run-kfp", target_val_per_class=10)

    task, parent = client.get_run(kfp_task), client.get_run(kfp_parent)
    assert task.data.params["source"] == "digits" and task.data.metrics["target_val_count"] == 100
    assert task.data.tags["tlpipe.step"] == "ingest" and task.data.tags["tlpipe.pipeline_run"] == "run-kfp"
    assert {d.dataset.digest for d in task.inputs.dataset_inputs} == {
        meta["content_hash"].split(":")[1][:32] for meta in facts.values()}
    # Its parent is this pipeline run's: tagged, with the shared parameters; no run of tlpipe's own anywhere.
    assert parent.data.tags["tlpipe.role"] == "pipeline" and parent.data.params["target"] == "digits-m"
    assert client.get_experiment_by_name("tlpipe") is None
    assert len(client.search_runs([experiment])) == 2
    # A later step of the same pipeline run, in a pod whose task run KFP made, finds the same parent.
    kfp_next = client.create_run(experiment, run_name="evaluate", tags={"mlflow.parentRunId": kfp_parent}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", kfp_next)
    with tracking.step_run("evaluate", "tlpipe", "run-kfp", {"select_by": "target-val"}):
        assert mlflow.active_run().info.run_id == kfp_next
    assert tracking.current_parent("tlpipe", "run-kfp") == kfp_parent


@pytest.mark.slow
def test_runs_started_at_once_on_an_empty_home_all_get_the_embedded_store(tmp_path):
    """Each process's first client creates the SQLite schema; at once, unserialised, one fails its migration."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"TLPIPE_HOME": str(tmp_path / "home")}
    code = "from tlpipe import tracking; tracking.experiment_id(tracking.configure(), 'tlpipe')"
    started = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(4)]
    ended = [(p.wait(timeout=300), p.stdout.read()) for p in started]
    assert all(code == 0 for code, _ in ended), [out[-800:] for code, out in ended if code]
    assert len(mlflow.MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}").search_experiments()) == 2
    # Nor does creating the schema print MLflow's and alembic's migration lines on a user's first run.
    assert all(out == "" for _, out in ended), [out[-800:] for _, out in ended]


STEP = """
from tlpipe import tracking
from tlpipe.errors import exit_on_user_error

@exit_on_user_error
def step():
    with tracking.step_run("pretrain", "tlpipe", "run-1", {"epochs": 3}):
        pass

step()
"""


@pytest.mark.slow
def test_a_step_whose_tracking_server_is_gone_says_so_in_a_minute_not_silently_for_many(tmp_path):
    """MLflow's client alone retries each request for about 4 minutes and then raises a traceback."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a server that went away
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": uri, "TLPIPE_HOME": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=400)
    assert time.monotonic() - started < 100
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlpipe: error:")]
    assert errors == [f"tlpipe: error: the MLflow tracking server {uri} stopped answering (connection refused, after "
                      "retries for about a minute); is it running, and is MLFLOW_TRACKING_URI right?"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
