"""The MLflow model registry: log the winner, register a version, and gate the `champion` alias.

Every new version gets the alias `challenger`. `champion` moves to it only when it is strictly more
accurate than the current champion on the same target test images, measured here, now; a worse or
failed run never moves it. Registering is idempotent per pipeline run (a retried step finds its
version), and the gate runs under a lock so that two runs finishing together leave the better
model as champion.
"""

import contextlib
import json
import random
import shutil
import tempfile
import time
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
from tlpipe.evaluate import score
from tlpipe.tracking import PIPELINE_RUN_TAG

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
)
# What a serving environment needs to load the model; the tlpipe package itself travels as code.
REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "safetensors", "numpy", "mlflow"]
PREVIOUS_CHAMPION_TAG = "tlpipe.previous_champion"
STALE_LOCK_SECONDS = 600


@dataclass
class Registration:
    model_name: str
    version: str
    accuracy: float
    promoted: bool
    champion_version: str
    previous_champion: str | None
    previous_champion_accuracy: float | None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Registration":
        return cls(**json.loads(Path(path).read_text()))


def champion_version(client, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


@contextlib.contextmanager
def gate_lock(client, model_name: str, timeout: float = 600):
    """A mutex over the champion alias, held as a registered model that exists while it is held.

    Creating a registered model is atomic in MLflow's store (SQLite or a tracking server alike), so
    this works wherever the registry does. A lock older than STALE_LOCK_SECONDS was left by a step
    that died holding it, and is broken.
    """
    lock = f"{model_name}.gate-lock"
    deadline = time.time() + timeout
    while True:
        try:
            client.create_registered_model(lock, description="held by a tlpipe register step while it moves aliases")
            break
        except MlflowException as error:
            # The store answers a taken name by reading the holder's lock; if the holder released it
            # in between, that read says "does not exist": the lock is free, so try again.
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        try:
            held_since = client.get_registered_model(lock).creation_timestamp / 1000
            if time.time() - held_since > STALE_LOCK_SECONDS:
                client.delete_registered_model(lock)
                continue
        except MlflowException:
            continue  # released meanwhile
        if time.time() > deadline:
            raise TlpipeError(f"timed out waiting for the registry lock {lock}; another register step holds it.")
        time.sleep(0.2 + random.random() * 0.3)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def _version_of_run(client, model_name: str, pipeline_run: str):
    query = f"name='{model_name}' and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'"
    found = client.search_model_versions(query)
    return found[0] if found else None


def log_and_register(model_dir: str | Path, model_name: str, tags: dict[str, str]) -> str:
    """Logs `model_dir` as a pyfunc model in the active run and registers it with its tags at once."""
    package = Path(tlpipe.__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package / "serving.py"),
        artifacts={"model": str(model_dir)},
        code_paths=[str(package)],
        signature=SIGNATURE,
        pip_requirements=REQUIREMENTS,
    )
    return str(mlflow.register_model(info.model_uri, model_name, tags=tags).version)


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


def champion_accuracy(model_name: str, version, test: ImageSet) -> float:
    """The champion's accuracy on `test`, loaded from the registry the way its users load it."""
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
    return score(loaded.unwrap_python_model().model, test).accuracy


def register(
    client, model_dir: str | Path, model_name: str, accuracy: float, test: ImageSet, tags: dict[str, str]
) -> Registration:
    """Registers `model_dir` (once per tags[PIPELINE_RUN_TAG]) and gates the champion alias."""
    existing = _version_of_run(client, model_name, tags[PIPELINE_RUN_TAG])
    version = str(existing.version) if existing else log_and_register(model_dir, model_name, tags)
    client.set_registered_model_alias(model_name, "challenger", version)

    with gate_lock(client, model_name):
        current = champion_version(client, model_name)
        if current is not None and str(current.version) == version:  # a retried step that had promoted
            previous = client.get_model_version(model_name, version).tags.get(PREVIOUS_CHAMPION_TAG)
            return Registration(model_name, version, accuracy, True, version, previous, None)
        current_accuracy = champion_accuracy(model_name, current, test) if current else None
        promoted = current is None or accuracy > current_accuracy
        if promoted:
            if current is not None:
                client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
            client.set_registered_model_alias(model_name, "champion", version)
        verdict = "promoted to champion" if promoted else f"kept champion v{current.version} ({current_accuracy:.4f})"
        client.set_model_version_tag(model_name, version, "tlpipe.gate", verdict)
    return Registration(
        model_name=model_name,
        version=version,
        accuracy=accuracy,
        promoted=promoted,
        champion_version=version if promoted else str(current.version),
        previous_champion=str(current.version) if current else None,
        previous_champion_accuracy=current_accuracy,
    )


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
            "gate": tags.get("tlpipe.gate", ""),
        })
    return rows
