"""Retraining's starting model: the registry's champion, or a source model trained now."""

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
