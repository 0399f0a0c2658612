"""Where retraining and source-free adaptation start: the registry's champion or a source model trained
now (retrain), or a registered model given by its URI (source-free)."""

from tlpipe.data import dataset_meta
from tlpipe.errors import TlpipeError
from tlpipe.models import load_model
from tlpipe.steps.common import model_facts, timed
from tlpipe.steps.pretrain import pretrain
from tlpipe.train import TrainConfig


@timed
def start_model(
    source_train: str,
    out: str,
    model_name: str,
    backbone: str,
    pretrained_weights: str,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
) -> dict:
    """Retraining's starting point: the registry's champion, or a new source model when there is none."""
    from tlpipe.registry import export_champion

    version = export_champion(model_name, out)
    if version is None:
        print(f"no champion of '{model_name}' in the registry: training the source model", flush=True)
        return {**pretrain(source_train, out, backbone, pretrained_weights, config, experiment, pipeline_run), "start": "source"}
    classes = dataset_meta(source_train)["classes"]
    _, meta = load_model(out)
    if meta["spec"]["classes"] != classes:
        raise TlpipeError(f"the champion of '{model_name}' (version {version}) predicts classes {meta['spec']['classes']}, "
                          f"the source data has {classes}; retrain needs the same classes.")
    print(f"starting from the champion of '{model_name}', version {version}", flush=True)
    return {**model_facts(meta), "start": "champion", "champion_version": version}


@timed
def given_model(uri: str, target_labelled: str, out: str, experiment: str, pipeline_run: str) -> dict:
    """The source-free pipeline's source model: the registered model `uri` names (models:/<name>@<alias>
    or /<version>), exported as it is; nothing of its training data is read. The parent run records it as
    the run's source."""
    from tlpipe import tracking
    from tlpipe.registry import export_version, registered_version
    from tlpipe.registry.champion import check_source_model_classes

    name, version = registered_version(uri)
    tracking.log_to_parent(tracking.configure(), tracking.current_parent(experiment, pipeline_run),
                           params={"source_model": f"models:/{name}/{version}"})
    export_version(name, version, out)
    _, meta = load_model(out)
    check_source_model_classes(uri, name, version, meta["spec"]["classes"], dataset_meta(target_labelled)["classes"])
    print(f"adapting {uri}: version {version} of '{name}' ({meta['spec']['backbone']})", flush=True)
    return {**model_facts(meta), "start": "registered", "registered_model": name, "registered_version": version}
