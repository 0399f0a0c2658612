"""What every step shares: its timing line, the split names, checkpoint places, publishing, and the
ending of a training step (save the model, log it in the step's run, drop the checkpoint)."""

import contextlib
import dataclasses
import functools
import io
import time
from pathlib import Path

import numpy as np

from tlpipe import augment, settings, storage, tracking
from tlpipe.checkpoint import Checkpoint
from tlpipe.data import ImageSet
from tlpipe.lifetime import follow_parent
from tlpipe.models import save_model
from tlpipe.train import TrainConfig

# What a step prints when it ends: the local runner's timing table reads it from the log.
COMPUTE_MARK = "tlpipe: step compute"

SPLITS = ["source_train", "source_val", "source_test", "target_labelled", "target_val", "target_unlabelled",
          "target_test"]
TRANSFER_SETTINGS = ("backbone_lr",)  # meaningless in pretraining
ADAPTATION_SETTINGS = (*TRANSFER_SETTINGS, "bottleneck", "sdat_rho")


def timed(func):
    """Prints the time spent inside the step, so that the process start, imports and KFP's artifact
    handling around it can be told apart from the step's own work."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        follow_parent()
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            print(f"{COMPUTE_MARK} {time.perf_counter() - started:.3f} s", flush=True)

    return wrapper


def publish(directory: str, publish_to: str, pipeline_run: str, name: str) -> str:
    """Copies an artifact directory to <publish_to>/<pipeline_run>/<name> (a local path or s3://)."""
    location = f"{publish_to.rstrip('/')}/{pipeline_run}/{name}"
    storage.upload(directory, location)
    return location


def augmenting(config: TrainConfig, meta: dict) -> TrainConfig:
    """The config with its augmentation resolved for the images it trains on (`auto`: by what they are)."""
    return dataclasses.replace(config, augment=augment.resolve(config.augment, meta))


def checkpointed(config: TrainConfig, pipeline_run: str, step: str) -> TrainConfig:
    """The config with the step's own checkpoint location: <root>/<pipeline run>/<step>.

    A retried step (same pipeline run) finds the checkpoint its killed predecessor left.
    """
    root = config.checkpoint_dir or str(settings.checkpoint_root())
    return dataclasses.replace(config, checkpoint_dir=f"{root.rstrip('/')}/{pipeline_run}/{step}")


def config_params(config: TrainConfig, kept: tuple[str, ...] = ()) -> dict:
    """The training settings as a step's parameters; where checkpoints lie is not one, nor the transfer
    and adaptation settings other than those `kept` (the ones the step uses)."""
    skip = {"checkpoint_dir", *(set(ADAPTATION_SETTINGS) - set(kept))}
    return {k: v for k, v in vars(config).items() if k not in skip}


@contextlib.contextmanager
def training_run(step: str, config: TrainConfig, experiment: str, pipeline_run: str, params: dict,
                 shared: dict | None, inputs: list[tuple[dict | None, str, str]]):
    """A training step's MLflow run (system metrics on), listing the (metadata, location, context) splits
    it reads; once the run has closed on a written model, the step's checkpoint is no longer needed."""
    with tracking.step_run(step, experiment, pipeline_run, params, shared=shared, system_metrics=True) as run:
        for meta, location, context in inputs:
            if meta is not None:
                tracking.log_split(meta, location, context)
        yield run
    Checkpoint(config.checkpoint_dir, {}).remove()
    if config.checkpoint_dir and not storage.is_s3(config.checkpoint_dir):  # the step's folder, and its run's once the last is gone
        for folder in (Path(config.checkpoint_dir), Path(config.checkpoint_dir).parent):
            with contextlib.suppress(OSError):
                folder.rmdir()


def save_trained(out: str, model, data: ImageSet, **facts) -> dict:
    """Writes a trained model to `out` and logs it as a LoggedModel of the step's run (two training
    images as its input example); returns the facts for the component's artifact metadata."""
    from tlpipe.registry import log_trained_model

    saved = save_model(out, model, **facts)
    log_trained_model(out, np.asarray(data.images[:2]), saved["method"])
    return model_facts(saved)


def model_facts(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("format", "spec")} | {"backbone": meta["spec"]["backbone"]}


def png_image(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))
