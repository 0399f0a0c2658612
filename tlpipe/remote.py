"""Submitting and scheduling pipelines on a Kubeflow Pipelines server, through kfp.Client (v2beta1 API).

A PIPELINE is a name (compiled now with the given Cluster options) or a compiled .yaml file.
Auth: --token (or $KF_PIPELINES_TOKEN); inside a pod, the projected service-account token that
kfp reads from $KF_PIPELINES_SA_TOKEN_PATH (default /var/run/secrets/kubeflow/pipelines/token).
"""

import contextlib
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tlpipe.cluster import Cluster, compile_pipeline
from tlpipe.errors import TlpipeError

API = "/apis/v2beta1"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
# robfig/cron (Kubeflow's scheduler) with seconds: second minute hour day-of-month month day-of-week.
CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}),
    ("day of week", 0, 6, {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}),
)
CRON_EXAMPLE = "e.g. '0 0 3 * * *' for 03:00 every day"


@dataclass
class Connection:
    client: object  # kfp.Client
    host: str

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    def recurring_run_url(self, recurring_run_id: str) -> str:
        return f"{self.host}/#/recurringrun/details/{recurring_run_id}"


def _token(token: str | None) -> str | None:
    return token or os.environ.get(TOKEN_ENV) or None


def _sa_token_path() -> str | None:
    from kfp import client

    path = os.environ.get(client.KF_PIPELINES_SA_TOKEN_ENV, client.KF_PIPELINES_SA_TOKEN_PATH)
    return path if Path(path).is_file() else None


def _check_reachable(host: str, token: str | None) -> None:
    """A quick health check: kfp.Client would otherwise retry an unreachable host for half a minute."""
    request = urllib.request.Request(f"{host}{API}/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5):
            return
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise TlpipeError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP {error.code}); "
                              f"pass --token or set {TOKEN_ENV}.") from None
        raise TlpipeError(f"{host} answered HTTP {error.code} at {API}/healthz; is it the Kubeflow Pipelines "
                          "API (e.g. http://localhost:8080 after `kubectl port-forward svc/ml-pipeline-ui 8080:80`)?") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise TlpipeError(f"cannot reach Kubeflow Pipelines at {host} ({reason}); check --host.") from None


def connect(host: str | None, token: str | None = None, namespace: str | None = None) -> Connection:
    from kfp import Client
    from kfp.client.client import KF_PIPELINES_ENDPOINT_ENV

    host = (host or os.environ.get(KF_PIPELINES_ENDPOINT_ENV, "")).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise TlpipeError(f"--host '{host}' is not an http(s) URL of the Kubeflow Pipelines API "
                          f"(or set {KF_PIPELINES_ENDPOINT_ENV}).")
    token, credentials = _token(token), None
    sa_token = None if token else _sa_token_path()
    if sa_token:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(sa_token)
    _check_reachable(host, token or (Path(sa_token).read_text().strip() if sa_token else None))
    with _quiet():
        client = Client(host=host, existing_token=token, credentials=credentials, namespace=namespace or "kubeflow")
    return Connection(client, host)


@contextlib.contextmanager
def _quiet():
    """kfp.Client prints its own links and warnings; tlpipe prints one result line instead."""
    import logging
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.ERROR)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _api_errors(connection_host: str, what: str):
    """kfp_server_api errors as one sentence."""
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as error:
        message = error.reason or ""
        try:
            body = json.loads(error.body or "{}")
            message = body.get("message") or body.get("error") or message
        except (ValueError, AttributeError):
            pass
        raise TlpipeError(f"Kubeflow Pipelines at {connection_host} refused to {what}: HTTP {error.status} {message}".rstrip()
                          + ".") from None
    except (OSError, ValueError) as error:
        raise TlpipeError(f"could not {what} on Kubeflow Pipelines at {connection_host}: {error}.") from None


def validate_cron(expression: str) -> str:
    """Checks a Kubeflow (robfig/cron) expression: six fields, seconds first."""
    fields = expression.split()
    if len(fields) != 6:
        hint = " (a five-field Unix cron needs a seconds field in front)" if len(fields) == 5 else ""
        raise TlpipeError(f"cron '{expression}' has {len(fields)} fields; Kubeflow Pipelines cron has 6, seconds "
                          f"first{hint}: {CRON_EXAMPLE}.")
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        if text == "?" and name in ("day of month", "day of week"):
            continue
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise TlpipeError(f"cron '{expression}': step '/{step}' in the {name} field is not a positive number.")
            if base == "*":
                continue
            for bound in base.split("-", 1):
                value = names.get(bound.upper(), int(bound) if bound.isdigit() else None)
                if value is None or not low <= value <= high:
                    raise TlpipeError(f"cron '{expression}': '{bound}' is not a valid {name} ({low}-{high}); "
                                      f"fields are second minute hour day-of-month month day-of-week, {CRON_EXAMPLE}.")
    return expression


def _package(pipeline: str, cluster: Cluster, tmp: str, given: dict[str, str]) -> tuple[str, dict]:
    """The compiled package for PIPELINE (a name or a .yaml file) and the typed arguments."""
    path = pipeline if pipeline.endswith((".yaml", ".yml")) else str(compile_pipeline(pipeline, tmp, cluster))
    return path, arguments_and_defaults(path, given)[0]


def arguments_and_defaults(pipeline: str, given: dict[str, str], cluster: Cluster | None = None) -> tuple[dict, dict]:
    """PIPELINE's (a name or a compiled .yaml file) typed arguments from NAME=VALUE strings, and its defaults
    (a name's as compiled for `cluster`)."""
    from kfp.components import load_component_from_file

    from tlpipe.cluster import pipeline as build_pipeline
    from tlpipe.preflight import pipeline_arguments

    if pipeline.endswith((".yaml", ".yml")):
        if not Path(pipeline).is_file():
            raise TlpipeError(f"compiled pipeline {pipeline} does not exist; write it with `tlpipe compile`.")
        component = load_component_from_file(pipeline)
    else:
        component = build_pipeline(pipeline, cluster)
    defaults = {k: spec.default for k, spec in component.component_spec.inputs.items()}
    return pipeline_arguments(component, given), defaults


def submit(connection: Connection, pipeline: str, cluster: Cluster, given: dict[str, str], experiment: str,
           run_name: str | None = None, namespace: str | None = None) -> tuple[str, str]:
    """Creates a run; its id and URL."""
    with tempfile.TemporaryDirectory() as tmp:
        path, arguments = _package(pipeline, cluster, tmp, given)
        with _api_errors(connection.host, "create the run"), _quiet():
            result = connection.client.create_run_from_pipeline_package(
                path, arguments=arguments, run_name=run_name or f"tlpipe {Path(path).stem}",
                experiment_name=experiment, namespace=namespace,
            )
    return result.run_id, connection.run_url(result.run_id)


# A run's states in the v2beta1 API: the ones it ends in, and how often a waiting client asks.
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
WAIT_POLL_SECONDS = 10.0


def wait(connection: Connection, run_id: str, said=print) -> tuple[str, str]:
    """Follows a run until it ends, saying each state it enters; its final state and, when it did not
    succeed, the reason the API gives. (kfp.Client.wait_for_run_completion waits past a cancellation.)"""
    import time

    seen = ""
    while True:
        with _api_errors(connection.host, f"read run {run_id}"), _quiet():
            run = connection.client.get_run(run_id)
        state = str(run.state or "PENDING").upper()
        if state != seen:
            said(f"run {run_id}: {state}")
            seen = state
        if state in FINAL_STATES:
            error = getattr(run, "error", None)
            return state, (getattr(error, "message", "") or "") if error else ""
        time.sleep(WAIT_POLL_SECONDS)


def schedule(connection: Connection, pipeline: str, cluster: Cluster, given: dict[str, str], experiment: str,
             cron: str, name: str | None = None, max_concurrency: int = 1, catchup: bool = False,
             replace: bool = False, namespace: str | None = None) -> tuple[str, str]:
    """Creates a recurring run (one at a time, no catch-up by default); its id and URL.

    A recurring run of the same name is an error, or with replace=True is deleted first: that keeps
    the chart's scheduling Job idempotent across upgrades.
    """
    validate_cron(cron)
    if max_concurrency < 1:
        raise TlpipeError("--max-concurrency must be 1 or more.")
    with tempfile.TemporaryDirectory() as tmp:
        path, arguments = _package(pipeline, cluster, tmp, given)
        name = name or f"tlpipe-{Path(path).stem}"
        client = connection.client
        with _api_errors(connection.host, "create the recurring run"), _quiet():
            existing = [r for r in list_recurring_runs(connection, namespace) if r["name"] == name]
            if existing and not replace:
                raise TlpipeError(f"a recurring run named '{name}' exists ({existing[0]['id']}); "
                                  "delete it, pick another --name, or pass --replace.")
            for old in existing:
                client.delete_recurring_run(old["id"])
            experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
            created = client.create_recurring_run(
                experiment_id=experiment_id, job_name=name, cron_expression=cron, max_concurrency=max_concurrency,
                no_catchup=not catchup, params=arguments, pipeline_package_path=path, enabled=True,
            )
    return created.recurring_run_id, connection.recurring_run_url(created.recurring_run_id)


def list_recurring_runs(connection: Connection, namespace: str | None = None) -> list[dict]:
    rows, token = [], ""
    with _api_errors(connection.host, "list recurring runs"):
        while True:
            page = connection.client.list_recurring_runs(page_token=token, page_size=100, namespace=namespace)
            for r in page.recurring_runs or []:
                cron = r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else ""
                rows.append({"id": r.recurring_run_id, "name": r.display_name, "cron": cron,
                             "status": str(r.status or ""), "experiment": r.experiment_id or ""})
            token = page.next_page_token
            if not token:
                return rows


def delete_recurring_run(connection: Connection, recurring_run_id: str) -> None:
    with _api_errors(connection.host, f"delete recurring run {recurring_run_id}"):
        connection.client.delete_recurring_run(recurring_run_id)
