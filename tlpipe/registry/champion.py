"""The registered model's champion: found by its alias, exported as a tlpipe model directory, loaded."""

import json
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from tlpipe.distributed import device
from tlpipe.errors import TlpipeError


def unanswered(what: str, error: MlflowException) -> TlpipeError:
    """The one sentence for a registry that failed to answer (not a "not found")."""
    return TlpipeError(f"cannot read {what} from the model registry ({error.error_code}: "
                       f"{error.message.splitlines()[0][:200]}); no alias was moved, try again when it answers.")


def champion_version(client, name: str):
    """The model version that holds the `champion` alias, or None when there is none: the registered model
    does not exist yet, or its aliases have no champion. Any other answer of the registry (an outage
    after MLflow's retries, a refused permission) stops the caller with one sentence: read as "no
    champion", it would promote a new version with no comparison."""
    def unreadable(error: MlflowException) -> TlpipeError:
        return unanswered(f"the champion of '{name}'", error)

    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise unreadable(error) from None
    if "champion" not in model.aliases:
        return None
    try:
        return client.get_model_version(name, str(model.aliases["champion"]))
    except MlflowException as error:
        raise unreadable(error) from None


def export_champion(model_name: str, out: str | Path) -> str | None:
    """Writes the champion's tlpipe model directory to `out`; its version, or None without a champion."""
    from tlpipe import tracking  # tracking's run helpers import nothing of the registry

    version = champion_version(tracking.configure(), model_name)
    if version is None:
        return None
    return export_version(model_name, str(version.version), out)


def export_version(model_name: str, version: str, out: str | Path) -> str:
    """Writes the tlpipe model directory of a registered version to `out`, noting its name and version in
    its model.json; returns the version."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=tmp)
        # log_and_register stores the tlpipe model directory as the pyfunc artifact "model".
        stored = mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]["model"]["path"]
        shutil.copytree(Path(local) / stored, out, dirs_exist_ok=True)
    meta_path = Path(out) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["registered_model"], meta["registered_version"] = model_name, version
    meta_path.write_text(json.dumps(meta, indent=2))
    return version


MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


def registered_version(uri: str) -> tuple[str, str]:
    """The registered model and version that `models:/<name>@<alias>` or `models:/<name>/<version>` names
    now, or one sentence on why there is none."""
    from tlpipe import settings, tracking

    form = "models:/<name>@<alias> or models:/<name>/<version>"
    match = MODEL_URI.fullmatch(uri.strip())
    if not match:
        raise TlpipeError(f"model must be {form}, e.g. models:/tlpipe@champion; got '{uri}'.")
    name, alias, version = match["name"], match["alias"], match["version"]
    client = tracking.configure()
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TlpipeError(f"no registered model '{name}' in the model registry at {settings.tracking_uri()}; "
                              "`tlpipe registry` lists what there is.") from None
        raise unanswered(f"model '{name}'", error) from None
    if alias is not None:
        if alias not in model.aliases:
            held = ", ".join(f"{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
            raise TlpipeError(f"model '{name}' has no alias '{alias}'; its aliases: {held}.")
        return name, str(model.aliases[alias])
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TlpipeError(f"model '{name}' has no version {version}; `tlpipe registry --model-name {name}` lists "
                              "its versions.") from None
        raise unanswered(f"version {version} of '{name}'", error) from None
    return name, version


def champion_classes(model_name: str) -> tuple[str, list[str]] | None:
    """The champion's version and the classes it predicts, or None without a champion."""
    from tlpipe import tracking

    version = champion_version(tracking.configure(), model_name)
    if version is None:
        return None
    return str(version.version), version_classes(model_name, str(version.version))


def version_classes(model_name: str, version: str) -> list[str]:
    """The classes a registered version predicts. Reads two small files of it (its MLmodel and the tlpipe
    model.json), not its weights."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    repository = ModelsArtifactRepository(f"models:/{model_name}/{version}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mlmodel = mlflow.models.Model.load(repository.download_artifacts("MLmodel", tmp))
            stored = mlmodel.flavors["python_function"]["artifacts"]["model"]["path"]
            meta = json.loads(Path(repository.download_artifacts(f"{stored}/model.json", tmp)).read_text())
        except MlflowException as error:
            raise unanswered(f"version {version} of '{model_name}'", error) from None
    return meta["spec"]["classes"]


def check_source_model_classes(uri: str, name: str, version: str, classes: list[str], target: list[str]) -> None:
    """Refuses the model a source-free run adapts when it predicts other classes than the target data has."""
    if classes != target:
        raise TlpipeError(f"{uri} (version {version} of '{name}') predicts classes {classes}, the target data has "
                          f"{target}; source-free adaptation needs the same classes.")


def champion_model(model_name: str, version):
    """The champion's network, loaded from the registry the way its users load it."""
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}").unwrap_python_model().model
    return model.to(device())
