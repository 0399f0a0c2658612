"""The images built and run: both Dockerfiles built (buildah here, Docker where an engine runs) on bases made
on this machine, every step of the transfer pipeline run in its image as its pod would (UID 1000, the
compiled IR's command, the Secrets' environment, the launcher's folders), and the registered model loaded
and asked to predict; negative controls: an image without kfp, an artifact folder UID 1000 cannot write.

The build is cached by the engine's layers (keyed by the Dockerfiles, constraints.txt and the code): a
cold build here takes about 13 minutes, a warm one about 75 s (README, "Run on Kubeflow")."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tlpipe.errors import TlpipeError
from tlpipe.images import build, engine, steps

REPO = Path(__file__).resolve().parents[1]


def test_compiled_pods_name_the_images_user_and_secrets(tmp_path):
    """What the check takes from the compiled IR: per component its image, UID 1000, its Secrets' keys and the
    run id from the pod label; and every component runs the same executor command as the local chain."""
    images = {"trainer": "registry.example.com/ml/tlpipe-trainer:0.1.0", "cpu": "registry.example.com/ml/tlpipe-cpu:0.1.0"}
    pods = steps.pods(steps.compiled(images, tmp_path))
    assert pods["pretrain"].image == images["trainer"] and pods["adapt"].image == images["trainer"]
    assert pods["ingest"].image == images["cpu"] and pods["close_run"].image == images["cpu"]
    for function, pod in pods.items():
        assert pod.user == "1000:1000", function
        assert {"AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_URI"} <= set(pod.secret_env), function
        assert pod.label_env == ("TLPIPE_PIPELINE_RUN",), function
        assert "kfp.dsl.executor_main" in " ".join(pod.command)
    from kfp import compiler

    from tlpipe.cluster import pipeline

    local_ir = tmp_path / "local.yaml"
    compiler.Compiler().compile(pipeline("transfer"), str(local_ir))
    steps.check_commands_match(pods, local_ir)
    changed = {name: steps.Pod(p.image, (*p.command, "--extra"), p.user, p.secret_env, p.label_env)
               for name, p in pods.items()}
    with pytest.raises(TlpipeError, match="another command on a cluster"):
        steps.check_commands_match(changed, local_ir)


def test_a_failed_step_is_one_sentence_that_names_the_problem():
    pod = steps.Pod("tlpipe-cpu:0.1.0", (), "1000:1000", (), ())
    no_kfp = steps.diagnose("ingest", pod, "Traceback ...\nModuleNotFoundError: No module named 'kfp'\n")
    assert "has no kfp" in no_kfp and "ingest" in no_kfp
    denied = steps.diagnose("pretrain", pod, "PermissionError: [Errno 13] Permission denied: '/data/model'\n")
    assert "could not write '/data/model' as UID 1000" in denied
    assert steps.diagnose("adapt", pod, "ValueError: boom\n").endswith("ValueError: boom")


def test_tags_follow_tlpipe_compile():
    from tlpipe.cluster import CPU_IMAGE, DEFAULT_IMAGE

    assert build.tags() == {"trainer": DEFAULT_IMAGE, "cpu": CPU_IMAGE}
    moved = build.tags("registry.example.com/ml/")
    assert moved["trainer"] == f"registry.example.com/ml/{DEFAULT_IMAGE.rsplit('/', 1)[1]}"
    assert build.pinned("torch") == "2.14.1"


def test_a_base_that_cannot_be_pulled_names_the_ways_around(tmp_path):
    class Unreachable(engine.Engine):
        def build(self, *args, **kwargs):
            raise TlpipeError("building x failed (buildah exited 125: Error: creating build container: initializing "
                              "source docker://python:3.11-slim-bookworm: pinging container registry registry-1.docker.io).")

    with pytest.raises(TlpipeError, match="cannot pull the base image: .*--cpu-base.*--local-base"):
        build.build(Unreachable("buildah"), roles=("cpu",))
    with pytest.raises(TlpipeError, match="CA bundle .* is not a file"):
        build.build(Unreachable("buildah"), ca_bundle=str(tmp_path / "missing.pem"))


def _engine_or_skip():
    try:
        found = engine.find()
    except TlpipeError:
        found = None
    if found is None and not (shutil.which("apt-get") and os.geteuid() == 0):
        pytest.skip("no Docker engine or buildah, and no root to install buildah")
    return found


@pytest.fixture(scope="module")
def built():
    """Both images from scripts/build-images --local-base (as a user on this kind of machine runs it)."""
    found = _engine_or_skip()
    cold = found is None or not all(found.exists(tag) for tag in build.tags().values())
    free = shutil.disk_usage("/var/lib").free
    if cold and free < 30e9:
        pytest.skip(f"a cold build of the images needs about 30 GB of free disk; {free / 1e9:.0f} GB are free")
    done = subprocess.run([str(REPO / "scripts" / "build-images"), "--local-base"], cwd=REPO, capture_output=True,
                          text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return engine.find(), done.stdout


@pytest.mark.images
@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first test builds (the fixture): a cold build takes about 13 minutes
def test_images_build_with_their_versions_and_hygiene(built):
    found, output = built
    tags = build.tags()
    for role in ("trainer", "cpu"):
        line = next(l for l in output.splitlines() if l.strip().startswith(tags[role] + ":"))
        assert "torch 2.14.1" in line and "kfp 2.17.0" in line and "mlflow 3.17.2" in line, line
        assert "pip check: clean" in line, line
        labels = found.labels(tags[role])
        assert labels["org.opencontainers.image.version"] == "0.1.0"
        assert labels["org.opencontainers.image.revision"].startswith(build.revision()[:7])
        # No build context (/src), no CA bundle (a secret mount leaves no file), no .git, .venv or tests.
        inside = found.run(tags[role], ["sh", "-c", "id -u; echo $HOME $TLPIPE_HOME; ls -d /src /opt/wheel/*.whl 2>/dev/null; "
                                        "find /run/secrets -type f 2>/dev/null; find / -xdev \\( -name .git -o -name .venv -o "
                                        "-name tests -path '*site-packages/tests' \\) 2>/dev/null | head -3; "
                                        "pip show -f tlpipe | grep -c '^  tests/' || true"], capture=True)
        uid, homes, *rest = inside.stdout.split("\n")
        assert uid == "1000" and homes == "/home/tlpipe /home/tlpipe/.tlpipe"
        left = [r for r in rest if r.strip() and r.strip() != "0"]
        assert left == [n for n in left if n.startswith("/opt/wheel/")], left  # no source, secret, .git or tests


@pytest.mark.images
@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(1800)
def test_every_transfer_step_runs_in_its_image_and_the_model_predicts(built, stack, tmp_path, monkeypatch):
    found, _ = built
    monkeypatch.setenv("TLPIPE_HOME", str(stack[0]))  # check() finds the fixture's stack running
    ran, said = steps.check(found, build.tags(), tmp_path / "work")
    print(said)
    tags = build.tags()
    where = {r.function: r.image for r in ran if r.ok}
    assert where == {"data_version": tags["cpu"], "ingest": tags["cpu"], "pretrain": tags["trainer"],
                     "finetune": tags["trainer"], "adapt": tags["trainer"], "evaluate": tags["trainer"],
                     "register": tags["trainer"], "close_run": tags["cpu"]}
    assert len(ran) == 9 and all(r.ok and r.user == "1000:1000" for r in ran)  # finetune twice: target-only
    assert "predicted 8 images" in said


@pytest.mark.images
@pytest.mark.slow
@pytest.mark.stack
def test_an_image_without_kfp_and_an_unwritable_folder_fail_with_a_sentence(built, stack, tmp_path):
    found, _ = built
    secrets = stack[1]
    tags = build.tags()
    broken = "localhost/tlpipe-check/cpu-without-kfp:0"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {tags['cpu']}\nUSER 0\nRUN /opt/venv/bin/pip uninstall -y -q kfp\n"
                                                 "USER 1000:1000\n")
    found.build(tmp_path / "ctx" / "Dockerfile", broken, tmp_path / "ctx", {})
    try:
        with pytest.raises(TlpipeError, match="cannot start in .*cpu-without-kfp.*has no kfp"):
            steps.run(found, {**tags, "cpu": broken}, secrets, tmp_path / "no-kfp")
    finally:
        found.remove(broken)
    with pytest.raises(TlpipeError, match="could not write '.*' as UID 1000 \\(Permission denied\\)"):
        steps.run(found, tags, secrets, tmp_path / "root-owned", artifact_mode=0o755)
