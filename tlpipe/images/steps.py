"""Runs the transfer pipeline's steps inside the images, one container per step, as their pods would.

kfp.local chains the tasks (its DockerRunner hands each task's executor command to a task handler); our
handler starts that command with the engine (Docker or buildah) the way the compiled pipeline's pod would:
- in the image the compiled IR names for the step's component (the trainer or the CPU image);
- the compiled IR's command and args (checked equal to the ones kfp.local runs), so the KFP executor
  (`python3 -m kfp.dsl.executor_main`, no kfp installed at start) must start in the image;
- as the pod's securityContext user (UID 1000), never root;
- with the environment its Secrets give it (S3, MLflow; here the local stack's values) and the run id it
  reads from its pod label; HOME and TLPIPE_HOME as the image sets them;
- with the folders a pod has: the artifacts (kfp.local's pipeline root at the same path; on a cluster the
  launcher's /s3, /minio or /gcs folder) and the launcher's scratch emptyDirs, world-writable as emptyDirs are.
A step that fails for a reason of the image (no kfp, an unwritable folder) fails the check with a sentence
that names it; checkpoints go to the stack's S3, as on a cluster.
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tlpipe.errors import TlpipeError
from tlpipe.images.engine import Engine, last_line

# The Argo executor template of KFP 2.17 mounts an emptyDir on each (seen in the backend compiler's workflow).
LAUNCHER_SCRATCH = ("/gcs", "/minio", "/s3", "/.local", "/.cache", "/.config")
TINY = dict(source_epochs=1, finetune_epochs=1, adapt_epochs=2)
_NO_KFP = re.compile(r"No module named '?kfp")
_DENIED = re.compile(r"Permission denied: '([^']+)'")


@dataclass(frozen=True)
class Pod:
    """What the compiled pipeline gives one component's pods."""

    image: str
    command: tuple[str, ...]  # the container's command + args, placeholders unreplaced
    user: str  # "UID:GID" of the securityContext
    secret_env: tuple[str, ...]  # variables the pod takes from Secrets
    label_env: tuple[str, ...]  # variables the pod takes from its labels (the run id)


def pods(ir_file: Path) -> dict[str, Pod]:
    """The compiled IR's pods by component function (several tasks of one function share a pod spec)."""
    spec, *rest = list(yaml.safe_load_all(ir_file.read_text()))
    platform = (rest[0] if rest else {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    found: dict[str, Pod] = {}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        command = (*container.get("command", []), *container.get("args", []))
        k8s = platform.get("executors", {}).get(name, {})
        context = k8s.get("securityContext", {})
        pod = Pod(container["image"], command,
                  f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}" if context else "",
                  tuple(e["envVar"] for s in k8s.get("secretAsEnv", []) for e in s["keyToEnv"]),
                  tuple(f["name"] for f in k8s.get("fieldPathAsEnv", [])))
        function = _function(command)
        if found.get(function, pod) != pod:
            raise TlpipeError(f"the compiled pipeline runs {function} in two different pods.")
        found[function] = pod
    return found


def _function(command) -> str:
    command = list(command)
    return command[command.index("--function_to_execute") + 1]


@dataclass
class StepRun:
    function: str
    image: str
    user: str
    seconds: float
    ok: bool


@dataclass
class _Context:
    engine: Engine
    pods: dict[str, Pod]
    secrets: dict[str, str]  # what the pods' Secrets hold
    run_id: str
    scratch: Path
    say: object  # prints a progress line where the user sees it
    ran: list[StepRun] = field(default_factory=list)
    failure: str = ""  # the first failed step's sentence


def _handler(c: _Context):
    """kfp.local's Docker task handler, running the task's pod with our engine."""
    from kfp.local import docker_task_handler, status

    class PodTaskHandler(docker_task_handler.DockerTaskHandler):
        def run(self):
            function = _function(self.full_command)
            pod = c.pods[function]
            env = {key: c.secrets[key] for key in pod.secret_env if key in c.secrets}
            env |= {key: c.run_id for key in pod.label_env}
            volumes = {self.pipeline_root: self.pipeline_root}
            volumes |= {str(c.scratch / name.strip("/")): name for name in LAUNCHER_SCRATCH}
            started = time.perf_counter()
            done = c.engine.run(pod.image, list(self.full_command), user=pod.user, env=env, volumes=volumes,
                                capture=True)
            print(done.stdout + done.stderr, end="")  # to the check's log
            ran = StepRun(function, pod.image, pod.user, time.perf_counter() - started, done.returncode == 0)
            c.ran.append(ran)
            c.say(f"  {function:<14} {pod.image} as {pod.user}: {'ok' if ran.ok else 'FAILED'} ({ran.seconds:.0f} s)")
            if done.returncode != 0 and not c.failure:
                c.failure = diagnose(function, pod, done.stdout + done.stderr)
            return status.Status.SUCCESS if done.returncode == 0 else status.Status.FAILURE

    return PodTaskHandler


def diagnose(function: str, pod: Pod, output: str) -> str:
    """One sentence for a step that failed in its image."""
    uid = pod.user.split(":")[0] or "the image's user"
    if _NO_KFP.search(output):
        return (f"step {function} cannot start in {pod.image}: the image has no kfp, so the KFP executor "
                "(python3 -m kfp.dsl.executor_main) cannot run; install kfp into /opt/venv (constraints.txt pins it).")
    denied = _DENIED.search(output)
    if denied:
        return (f"step {function} in {pod.image} could not write '{denied.group(1)}' as UID {uid} (Permission denied): "
                "make that folder writable by the pods' user in the Dockerfile, or mount a volume there.")
    return f"step {function} failed in {pod.image} as UID {uid}: {last_line(output)}"


def compiled(images: dict[str, str], out_dir: Path) -> Path:
    """The transfer pipeline compiled for a cluster that runs these images ({"trainer": ..., "cpu": ...})."""
    from tlpipe.cluster import Cluster, compile_pipeline

    return compile_pipeline("transfer", out_dir, Cluster(image=images["trainer"], light_image=images["cpu"]))


def check_commands_match(cluster_pods: dict[str, Pod], local_ir: Path) -> None:
    """Every component runs the same executor command on a cluster as in the local chain we run."""
    for function, pod in pods(local_ir).items():
        if function in cluster_pods and cluster_pods[function].command != pod.command:
            raise TlpipeError(f"component {function} runs another command on a cluster than locally.")


def run(engine: Engine, images: dict[str, str], secrets: dict[str, str], work: Path,
        arguments: dict | None = None, model_name: str = "images-check", artifact_mode: int = 0o777) -> list[StepRun]:
    """Runs every step of the transfer pipeline (tiny epochs unless `arguments` say otherwise) in its image;
    `secrets` are the values of the pods' Secrets (S3 and MLflow); the artifact folder has `artifact_mode`
    (an emptyDir's 0777; 0755 for a root-owned folder). Prints a line per step; the steps' and kfp.local's
    output go to work/check.log. Raises TlpipeError naming the first step that failed and why."""
    from kfp import compiler, local
    from kfp.local import task_dispatcher

    from tlpipe.cluster import Cluster, pipeline

    work.mkdir(parents=True, exist_ok=True)
    ir_dir = Path(tempfile.mkdtemp(prefix="ir-", dir=work))
    cluster_pods = pods(compiled(images, ir_dir))
    local_ir = ir_dir / "local.yaml"
    compiler.Compiler().compile(pipeline("transfer"), str(local_ir))
    check_commands_match(cluster_pods, local_ir)

    # An artifact folder and the launcher's scratch are emptyDirs in a pod: writable by any user.
    root = work / "pipeline-root"
    scratch = work / "scratch"
    for folder in (root, *(scratch / n.strip("/") for n in LAUNCHER_SCRATCH)):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(artifact_mode if folder == root else 0o777)
    run_id = f"images-check-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    terminal = sys.stdout
    context = _Context(engine, cluster_pods, secrets, run_id, scratch, lambda line: print(line, file=terminal, flush=True))
    # Checkpoints where a cluster keeps them (Cluster.checkpoint_root's bucket is the stack's).
    values = {**TINY, "model_name": model_name, "checkpoint_root": f"{Cluster().checkpoint_root}/{run_id}",
              **(arguments or {})}
    # kfp.local has no hook for a runner of one's own: its Docker task handler is swapped for this run (kfp is
    # pinned in constraints.txt, and tests/test_images.py runs this with it).
    saved = task_dispatcher.docker_task_handler.DockerTaskHandler
    task_dispatcher.docker_task_handler.DockerTaskHandler = _handler(context)
    log = work / "check.log"
    try:
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            local.init(runner=local.DockerRunner(), pipeline_root=str(root), enable_caching=False)
            pipeline("transfer")(**values)
    except RuntimeError as error:
        raise TlpipeError(f"{(context.failure or str(error)).rstrip('.')}; the steps' output is in {log}.") from None
    finally:
        task_dispatcher.docker_task_handler.DockerTaskHandler = saved
        shutil.rmtree(ir_dir, ignore_errors=True)
    if context.failure:  # a failed exit handler (close-run) does not fail kfp.local's run
        raise TlpipeError(f"{context.failure.rstrip('.')}; the steps' output is in {log}.")
    return context.ran


def registration(work: Path):
    """The register step's Registration from the run's artifact folder."""
    from tlpipe.registry import Registration

    found = sorted((work / "pipeline-root").glob("**/register/registration"))
    if not found:
        raise TlpipeError("the run left no registration: the register step did not finish.")
    return Registration.load(found[-1])


def check(engine: Engine, images: dict[str, str], work: Path) -> tuple[list[StepRun], str]:
    """The whole check on the local stack (S3 + MLflow servers, started if not running): every step in its
    image, then the registered model loaded here from the registry and asked to predict. Returns the steps
    and a sentence of what happened."""
    import mlflow
    import numpy as np
    from sklearn.datasets import load_digits

    from tlpipe import stack

    missing = [tag for tag in images.values() if not engine.exists(tag)]
    if missing:
        raise TlpipeError(f"no image {', '.join(missing)} on this machine: build it first (scripts/build-images).")
    was_running = stack.running()
    secrets = stack.up()
    try:
        started = time.perf_counter()
        ran = run(engine, images, secrets, work)
        seconds = time.perf_counter() - started
        reg = registration(work)
        stack.activate()
        uri = f"models:/{reg.model_name}/{reg.version}"
        digits = load_digits().images[:8]
        pixels = np.repeat((digits * (255 / 16)).astype(np.uint8)[..., None], 3, axis=-1)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with warnings.catch_warnings():  # MLflow's advice on type hints for pyfunc models says nothing here
            warnings.simplefilter("ignore", UserWarning)
            predicted = mlflow.pyfunc.load_model(uri).predict(pixels)
    finally:
        if not was_running:  # a stack the check started ends with it; its data stays
            stack.down()
    return ran, (f"all {len(ran)} steps ran in their images in {seconds:.0f} s; registered {uri} (alias {reg.alias}), "
                 f"loaded here from the registry, predicted {len(predicted)} images: "
                 f"{', '.join(map(str, predicted['class'].tolist()))}; the steps' output: {work / 'check.log'}")
