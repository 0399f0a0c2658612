"""What torchrun starts on every node of a multi-node training step (a Kubeflow Trainer job):

    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m tlpipe.launch SPEC

SPEC (JSON, written by the step's launcher component, tlpipe/trainjob.py) names the step (pretrain,
finetune, adapt), its component's parameters, the input artifacts' locations (s3:// on a cluster) and
where the trained model and its facts go. Global rank 0 downloads the inputs, runs the step as its KFP
pod would (tlpipe.steps.training) and uploads the model, then the facts (their presence says the model is
whole); every other rank trains in distributed.follow(). How many nodes and processes there are is
torchrun's to say (RANK, WORLD_SIZE, LOCAL_RANK).
"""

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LocalArtifact:
    """An artifact as a component sees it: a local path (and metadata the step may add)."""

    path: str
    metadata: dict = field(default_factory=dict)


def run(spec: dict) -> None:
    from tlpipe import distributed, storage
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps import training

    distributed.join()  # every rank at once: a rank 0 that fails before training ends the others' wait
    if distributed.rank_world()[0] != 0:
        distributed.follow()
        return
    with tempfile.TemporaryDirectory(prefix="tlpipe-launch-") as tmp:
        parameters = dict(spec["parameters"])
        for name, location in spec["inputs"].items():
            parameters[name] = LocalArtifact(str(storage.download(location, Path(tmp) / name))) if location else None
        parameters["model"] = LocalArtifact(str(Path(tmp) / "model"))
        facts = exit_on_user_error(training.STEPS[spec["step"]])(parameters)
        distributed.release()
        storage.upload(Path(tmp) / "model", spec["output"])
        (Path(tmp) / "facts.json").write_text(json.dumps(facts))
        storage.upload(Path(tmp) / "facts.json", spec["facts"])


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: torchrun ... -m tlpipe.launch SPEC (the JSON a launcher component writes)")
    run(json.loads(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
