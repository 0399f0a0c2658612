"""The MLflow model registry: log the winner, register a version, and gate the `champion` alias.

Every new version gets the alias `challenger`. `champion` moves to it only when it is strictly more
accurate than the current champion on the same target test images, measured here, now; a worse or
failed run never moves it.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

import tlpipe
from tlpipe.data import ImageSet
from tlpipe.evaluate import score

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
)
# What a serving environment needs to load the model; the tlpipe package itself travels as code.
REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "safetensors", "numpy", "mlflow"]


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


def log_model(model_dir: str | Path, model_name: str) -> str:
    """Logs `model_dir` as a pyfunc model in the active run, registers it, returns the version."""
    package = Path(tlpipe.__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package / "serving.py"),
        artifacts={"model": str(model_dir)},
        code_paths=[str(package)],
        signature=SIGNATURE,
        pip_requirements=REQUIREMENTS,
        registered_model_name=model_name,
    )
    return str(info.registered_model_version)


def champion_accuracy(model_name: str, version, test: ImageSet) -> float:
    """The champion's accuracy on `test`, loaded from the registry the way its users load it."""
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
    return score(loaded.unwrap_python_model().model, test).accuracy


def register(
    client, model_dir: str | Path, model_name: str, accuracy: float, test: ImageSet, tags: dict[str, str]
) -> Registration:
    from tlpipe.tracking import champion_version

    version = log_model(model_dir, model_name)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, "challenger", version)

    current = champion_version(client, model_name)
    current_accuracy = champion_accuracy(model_name, current, test) if current else None
    promoted = current is None or accuracy > current_accuracy
    if promoted:
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
