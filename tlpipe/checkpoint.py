"""Checkpoints that let a killed training step (a preempted node, a KFP retry) resume exactly.

A checkpoint holds the model(s), optimizer, batch order, every RNG state and the epoch reached. It
is written whole or not at all: locally to a temporary file renamed into place, on S3 as a single
object (an S3 PUT is atomic). Files are loaded with torch.load(weights_only=True): nothing pickled.
"""

import io
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from tlpipe import storage

FILE = "checkpoint.pt"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Checkpoint:
    """Saves and restores `objects` (anything with state_dict/load_state_dict) at `location`."""

    def __init__(self, location: str, objects: dict):
        self.location = location.rstrip("/") + "/" + FILE
        self.objects = objects

    def save(self, epoch: int) -> None:
        state = {"epoch": epoch, "rng": _rng_state(), **{k: v.state_dict() for k, v in self.objects.items()}}
        if storage.is_s3(self.location):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
                tmp.write(buffer.getvalue())
                tmp.flush()
                storage.upload(tmp.name, self.location)
            return
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)  # a reader sees the old checkpoint or the new one, never half of one

    def restore(self) -> int:
        """Loads the checkpoint if there is one; returns the number of epochs it had completed."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(self.location)
            if storage.is_s3(self.location):
                if FILE not in storage.list_keys(self.location.rsplit("/", 1)[0]):
                    return 0
                local = storage.download(self.location, Path(tmp) / FILE)
            elif not local.is_file():
                return 0
            try:
                state = torch.load(local, map_location="cpu", weights_only=True)
                missing = [k for k in ("epoch", "rng", *self.objects) if k not in state]
            except Exception as error:  # truncated or corrupt: a retry must not fail on it forever
                missing = [f"unreadable: {str(error).splitlines()[0][:120]}"]
        if missing:
            print(f"tlpipe: the checkpoint {self.location} cannot be resumed ({', '.join(missing)}); "
                  "the step starts again from its first epoch", flush=True)
            self.remove()
            return 0
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        _set_rng_state(state["rng"])
        return int(state["epoch"])

    def remove(self) -> None:
        if storage.is_s3(self.location):
            bucket, key = storage.split_s3(self.location)
            storage.client().delete_object(Bucket=bucket, Key=key)
        else:
            Path(self.location).unlink(missing_ok=True)
