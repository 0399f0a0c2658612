"""Models as MLflow pyfunc LoggedModels: logged by the step that trained them, registered from there."""

import json
import re
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema

import tlpipe

# Outputs only: the model checks its input itself (tlpipe.serving.as_images), in one sentence, and takes a
# single image or the integers of a JSON request, which an input schema would refuse or cast first.
SIGNATURE = ModelSignature(
    inputs=None,
    outputs=Schema([ColSpec("long", "class_id"), ColSpec("string", "class"), ColSpec("double", "confidence")]),
)


def pinned(distribution: str) -> str:
    """`distribution` at the version installed here (constraints.txt pins it), without a local build tag
    such as +cpu, so that a serving environment gets the release this model was trained with."""
    return f"{distribution}=={version(distribution).split('+')[0]}"


LOGGED_MODEL_FILE = "mlflow_model.json"  # beside a model artifact: the LoggedModel it was logged as


def log_model(model_dir: str | Path, input_example: np.ndarray | None = None, name: str = "model"):
    """Logs `model_dir` as a pyfunc LoggedModel of the active run: models from code (serving.py),
    safetensors weights, the tlpipe package as code; images of any size in, class ids, names and
    confidences out (tlpipe.serving)."""
    package = Path(tlpipe.__file__).resolve().parent
    # The whole package, not only what serving imports: MLflow puts a loaded model's code first on sys.path,
    # so a process that loaded a champion starts its child processes with that copy of tlpipe.
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
    """What a serving environment needs to load the model (the tlpipe package itself travels as code):
    torch and torchvision at this environment's versions, and timm too for a timm backbone."""
    backbone = json.loads((Path(model_dir) / "model.json").read_text())["spec"]["backbone"]
    needs = [pinned("torch"), pinned("torchvision"), "safetensors", "numpy", "mlflow"]
    return needs + ([pinned("timm")] if backbone.startswith("timm:") else [])


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
