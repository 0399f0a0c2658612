"""The MLflow model registry: log trained models, register the selected one, and gate the `champion` alias.

Each training step logs its model as an MLflow LoggedModel in its own run (`log_trained_model`), so a
registered version's source run is the run that trained it. `champion` moves to a new version only on
evidence; a version that is not promoted becomes the `challenger` (the newest one not promoted), and a
promoted one carries `champion` alone. The evidence: both models
classify the same target test images here, now, and the one-sided exact McNemar test on the images
where they disagree must give p < gate_alpha (and the gain must be at least gate_margin points). A
worse, equal, merely luckier or failed run never moves it. Registering is idempotent per pipeline run
(a retried step finds its version), and the gate runs under a lease-based lock so that two runs
finishing together leave the better model as champion.
"""

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

import tlpipe
from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import PairedComparison, paired_comparison, score
from tlpipe.models import load_model
from tlpipe.tracking import PIPELINE_RUN_TAG
from tlpipe.train import device

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
)
# What a serving environment needs to load the model; the tlpipe package itself travels as code.
REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "safetensors", "numpy", "mlflow"]
PREVIOUS_CHAMPION_TAG = "tlpipe.previous_champion"
LEASE_ENV = "TLPIPE_GATE_LEASE_SECONDS"  # how long the gate lock outlives its holder's last renewal
DEFAULT_LEASE_SECONDS = 60.0


@dataclass
class Gate:
    """When a challenger replaces the champion: p < alpha and a gain of at least `margin` points."""

    alpha: float = 0.05
    margin: float = 0.0

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise TlpipeError(f"gate_alpha must be above 0 and at most 1, got {self.alpha}.")
        if not 0 <= self.margin <= 100:
            raise TlpipeError(f"gate_margin is a gain in accuracy points, from 0 to 100; got {self.margin}.")

    def passes(self, evidence: PairedComparison) -> bool:
        return evidence.p_value < self.alpha and evidence.gain >= self.margin

    def verdict(self, evidence: PairedComparison, champion: str) -> str:
        if self.passes(evidence):
            return f"promoted: better than champion v{champion} (p={evidence.p_value:.3g} < {self.alpha:g})"
        why = (f"p={evidence.p_value:.3g} >= {self.alpha:g}" if evidence.p_value >= self.alpha
               else f"gain {evidence.gain:+.2f} points < margin {self.margin:g}")
        return f"kept champion v{champion}: not shown better ({why})"


@dataclass
class Registration:
    model_name: str
    version: str
    accuracy: float  # on the target test split
    promoted: bool
    champion_version: str
    previous_champion: str | None
    previous_champion_accuracy: float | None  # on the same test images
    verdict: str = ""
    p_value: float | None = None
    challenger_only: int | None = None  # test images only the challenger gets right
    champion_only: int | None = None  # test images only the champion gets right
    test_images: int = 0

    @property
    def alias(self) -> str:
        """The alias this version holds: a promoted version is the champion, any other the challenger."""
        return "champion" if self.promoted else "challenger"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Registration":
        return cls(**json.loads(Path(path).read_text()))

    def tags(self) -> dict[str, str]:
        """The gate's evidence as version tags, one fact each."""
        facts = {"verdict": self.verdict, "promoted": str(self.promoted), "p_value": self.p_value,
                 "challenger_accuracy": self.accuracy, "champion_accuracy": self.previous_champion_accuracy,
                 "challenger_only": self.challenger_only, "champion_only": self.champion_only,
                 "champion_version": self.previous_champion, "test_images": self.test_images}
        return {f"tlpipe.gate.{k}": f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in facts.items()
                if v is not None}

    @classmethod
    def load_tags(cls, model_name: str, version: str, tags: dict[str, str]) -> "Registration":
        """The registration a version's gate tags record (a retried register step returns it)."""
        get = lambda key, kind: kind(tags[f"tlpipe.gate.{key}"]) if f"tlpipe.gate.{key}" in tags else None  # noqa: E731
        return cls(model_name, version, get("challenger_accuracy", float), get("promoted", str) == "True", version,
                   get("champion_version", str), get("champion_accuracy", float), get("verdict", str),
                   get("p_value", float), get("challenger_only", int), get("champion_only", int),
                   get("test_images", int) or 0)


def champion_version(client, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SECONDS))


class Lease:
    """The gate lock: a registered model that exists while a step holds it, tagged with its owner and
    the time its lease runs out. Creating a registered model is atomic in MLflow's store (SQLite or a
    tracking server alike), so exactly one step gets it. The holder renews the lease while it works; a
    waiting step breaks the lock only once the lease has lapsed (its holder died), and a holder deletes
    the lock only while it still owns it."""

    def __init__(self, client, model_name: str, seconds: float | None = None):
        self.client, self.name = client, f"{model_name}.gate-lock"
        self.seconds = seconds or lease_seconds()
        self.owner = uuid.uuid4().hex

    def acquire(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                self.client.create_registered_model(
                    self.name, tags={"owner": self.owner, "lease_until": str(time.time() + self.seconds)},
                    description="held by a tlpipe register step while it moves aliases")
                return
            except MlflowException as error:
                # The store answers a taken name by reading the holder's lock; if the holder released it
                # in between, that read says "does not exist": the lock is free, so try again.
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue
                if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            held = self._read()
            if held is not None and time.time() > self._until(held):
                self._break(held)
                continue
            if time.time() > deadline:
                raise TlpipeError(f"timed out waiting for the registry lock {self.name}; another register step holds it.")
            time.sleep(0.2 + random.random() * 0.3)

    def _read(self):
        try:
            return self.client.get_registered_model(self.name)
        except MlflowException:
            return None  # released meanwhile

    def _until(self, held) -> float:
        # A lock without a lease tag was left by an older tlpipe: its lease is ten minutes from creation.
        return float(held.tags.get("lease_until", held.creation_timestamp / 1000 + 600))

    def _break(self, lapsed) -> None:
        """Deletes a lock whose lease lapsed, unless it was renewed or taken by another step meanwhile."""
        now = self._read()
        if now is not None and now.tags == lapsed.tags:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(self.name)

    def owned(self) -> bool:
        held = self._read()
        return held is not None and held.tags.get("owner") == self.owner

    def renew(self) -> bool:
        if not self.owned():
            return False
        self.client.set_registered_model_tag(self.name, "lease_until", str(time.time() + self.seconds))
        return True

    def check(self) -> None:
        """Raises unless this step still holds the lock: call before moving an alias."""
        if not self.owned():
            raise TlpipeError(f"this register step lost the registry lock {self.name} (its lease of {self.seconds:g} s "
                              "lapsed); nothing was moved: run register again.")

    def release(self) -> None:
        if self.owned():
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(self.name)


@contextlib.contextmanager
def gate_lock(client, model_name: str, timeout: float = 600):
    """Holds the gate lock (a Lease), renewing it every third of its lease from a background thread."""
    lease = Lease(client, model_name)
    lease.acquire(timeout)
    stop = threading.Event()

    def keep_renewing():
        while not stop.wait(lease.seconds / 3):
            with contextlib.suppress(MlflowException):
                if not lease.renew():
                    return

    renewer = threading.Thread(target=keep_renewing, name="gate-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        lease.release()


def _version_of_run(client, model_name: str, pipeline_run: str):
    query = f"name='{model_name}' and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'"
    found = client.search_model_versions(query)
    return found[0] if found else None


LOGGED_MODEL_FILE = "mlflow_model.json"  # beside a model artifact: the LoggedModel it was logged as


def log_model(model_dir: str | Path, input_example: np.ndarray | None = None, name: str = "model"):
    """Logs `model_dir` as a pyfunc LoggedModel of the active run: models from code (serving.py),
    safetensors weights, the tlpipe package as code; uint8 images of any size in, class ids out."""
    package = Path(tlpipe.__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(package / "serving.py"),
        artifacts={"model": str(model_dir)},
        code_paths=[str(package)],
        signature=SIGNATURE,
        input_example=input_example,
        pip_requirements=requirements(model_dir),
    )


def requirements(model_dir: str | Path) -> list[str]:
    """REQUIREMENTS, and timm at this environment's version for a timm backbone."""
    from importlib.metadata import version

    backbone = json.loads((Path(model_dir) / "model.json").read_text())["spec"]["backbone"]
    return REQUIREMENTS + ([f"timm=={version('timm')}"] if backbone.startswith("timm:") else [])


def log_trained_model(model_dir: str | Path, input_example: np.ndarray, method: str) -> str:
    """Logs a training step's model in its run, named after its method, and notes its LoggedModel id
    beside it (read back by `logged_model` when the model is registered); returns the id."""
    name = re.sub(r"[^A-Za-z0-9_+-]+", "-", method)  # MLflow refuses / : . % and quotes in model names
    info = log_model(model_dir, input_example, name)
    (Path(model_dir) / LOGGED_MODEL_FILE).write_text(json.dumps({"model_id": info.model_id, "run_id": info.run_id}))
    return info.model_id


def logged_model(model_dir: str | Path) -> dict | None:
    """{"model_id", "run_id"} of the LoggedModel `model_dir` was logged as, or None."""
    path = Path(model_dir) / LOGGED_MODEL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def log_and_register(model_dir: str | Path, model_name: str, tags: dict[str, str]) -> str:
    """Registers the LoggedModel the training step logged for `model_dir`; a model no step logged (one
    made outside a pipeline) is logged in the active run first."""
    logged = logged_model(model_dir)
    uri = f"models:/{logged['model_id']}" if logged else log_model(model_dir).model_uri
    return str(mlflow.register_model(uri, model_name, tags=tags).version)


def export_champion(model_name: str, out: str | Path) -> str | None:
    """Writes the champion's tlpipe model directory to `out`; its version, or None without a champion."""
    from tlpipe import tracking

    version = champion_version(tracking.configure(), model_name)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version.version}", dst_path=tmp)
        # log_and_register stores the tlpipe model directory as the pyfunc artifact "model".
        stored = mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]["model"]["path"]
        shutil.copytree(Path(local) / stored, out, dirs_exist_ok=True)
    meta_path = Path(out) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["registered_version"] = str(version.version)
    meta_path.write_text(json.dumps(meta, indent=2))
    return str(version.version)


def champion_model(model_name: str, version):
    """The champion's network, loaded from the registry the way its users load it."""
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}").unwrap_python_model().model
    return model.to(device())


def register(client, model_dir: str | Path, model_name: str, test: ImageSet, tags: dict[str, str],
             gate: Gate = Gate()) -> Registration:
    """Registers `model_dir` (once per tags[PIPELINE_RUN_TAG]) and gates the champion alias."""
    challenger = load_model(model_dir, device())[0]
    existing = _version_of_run(client, model_name, tags[PIPELINE_RUN_TAG])
    version = str(existing.version) if existing else log_and_register(model_dir, model_name, tags)

    with gate_lock(client, model_name) as lease:
        current = champion_version(client, model_name)
        if current is not None and str(current.version) == version:  # a retried step that had promoted
            return Registration.load_tags(model_name, version, client.get_model_version(model_name, version).tags)
        if current is None:
            result = Registration(model_name, version, score(challenger, test).accuracy, True, version, None, None,
                                  "promoted: the first champion", test_images=len(test))
        else:
            champion = champion_model(model_name, current)
            if champion.spec.classes != challenger.spec.classes:
                client.set_registered_model_alias(model_name, "challenger", version)
                raise TlpipeError(
                    f"the champion of '{model_name}' (version {current.version}) predicts classes "
                    f"{champion.spec.classes} and this model {challenger.spec.classes}, so they cannot be compared on "
                    f"the same test images; version {version} stays registered as challenger and the champion is "
                    "unchanged: register models of these classes under another model_name (-p model_name=...).")
            evidence = paired_comparison(challenger, champion, test)
            promoted = gate.passes(evidence)
            result = Registration(
                model_name, version, evidence.challenger_accuracy, promoted, version if promoted else str(current.version),
                str(current.version), evidence.champion_accuracy, gate.verdict(evidence, str(current.version)),
                evidence.p_value, evidence.challenger_only, evidence.champion_only, len(test))
        lease.check()
        for key, value in result.tags().items():
            client.set_model_version_tag(model_name, version, key, value)
        if result.promoted:
            if current is not None:
                client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
            client.set_registered_model_alias(model_name, "champion", version)
            aliases = client.get_registered_model(model_name).aliases
            if str(aliases.get("challenger", "")) == version:  # set by an earlier attempt of this step
                client.delete_registered_model_alias(model_name, "challenger")
        else:
            client.set_registered_model_alias(model_name, "challenger", version)
    return result


def rollback(client, model_name: str) -> tuple[str, str]:
    """Moves `champion` back to the version it replaced; returns (from, to)."""
    with gate_lock(client, model_name):
        current = champion_version(client, model_name)
        if current is None:
            raise TlpipeError(f"model '{model_name}' has no champion to roll back.")
        previous = current.tags.get(PREVIOUS_CHAMPION_TAG)
        if not previous:
            raise TlpipeError(f"champion version {current.version} of '{model_name}' replaced no earlier champion; nothing to roll back to.")
        client.set_registered_model_alias(model_name, "champion", previous)
        client.set_model_version_tag(model_name, str(current.version), "tlpipe.rolled_back", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return str(current.version), previous


def versions(client, model_name: str) -> list[dict]:
    """Every version with its aliases, accuracy and lineage, newest first."""
    found = client.search_model_versions(f"name='{model_name}'")
    if not found:
        raise TlpipeError(f"no registered model named '{model_name}'.")
    # Search results leave out aliases; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(model_name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = v.tags
        rows.append({
            "version": str(v.version),
            "aliases": ",".join(sorted(aliases.get(str(v.version), []))) or "-",
            "accuracy": tags.get("tlpipe.accuracy", ""),
            "candidate": tags.get("tlpipe.candidate", ""),
            "method": tags.get("tlpipe.method", ""),
            "pipeline_run": tags.get(PIPELINE_RUN_TAG, ""),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
            "evidence": _evidence(tags),
            "p": tags.get("tlpipe.gate.p_value", ""),
            "gate": tags.get("tlpipe.gate.verdict", ""),
        })
    return rows


def _evidence(tags: dict[str, str]) -> str:
    """The gate's comparison in a few characters: champion, its accuracy, images only each got right."""
    if "tlpipe.gate.champion_version" not in tags:
        return "-"
    return (f"vs v{tags['tlpipe.gate.champion_version']} {float(tags['tlpipe.gate.champion_accuracy']):.4f}, "
            f"+{tags['tlpipe.gate.challenger_only']}/-{tags['tlpipe.gate.champion_only']}")
