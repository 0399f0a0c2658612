"""The predict step: a registered model's predictions for a folder of images (local or S3), streamed in
batches, on the GPU when there is one, written as Parquet with the signals that need no labels."""

import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch

from tlpipe import tracking
from tlpipe.data.files import file_batches, image_files
from tlpipe.distributed import device
from tlpipe.models import load_model
from tlpipe.scoring import PIXELS_PER_BATCH
from tlpipe.steps.common import publish, timed

PREDICTIONS_FILE = "predictions.parquet"
SUMMARY_FILE = "summary.json"
# Below this confidence a prediction is counted as unsure (a share that rises when the images drift).
UNSURE_BELOW = 0.5
METRIC_UNSAFE = re.compile(r"[^\w./ -]")  # what MLflow refuses in a metric's name (a class name may hold it)


@dataclass
class PredictionSummary:
    """What the predictions say without labels, and against folder names where those are classes."""
    model: str  # the URI as given
    model_name: str
    version: str
    images: str  # the spec as given
    count: int
    classes: list[str]
    predicted: dict[str, int]  # images per predicted class, every class listed
    mean_confidence: float
    unsure_share: float  # predictions with confidence below UNSURE_BELOW
    mean_entropy: float  # of the predicted distribution, over log(classes): 0 certain, 1 uniform
    skipped_count: int = 0  # files that are not PNG or JPEG, left out
    skipped: list[str] = field(default_factory=list)  # the first 20 of them
    folder_count: int = 0  # images in a folder named after one of the classes
    folder_agreement: float | None = None  # the share of those predicted as their folder's class

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "PredictionSummary":
        return cls(**json.loads(Path(path).read_text()))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Each row's entropy over log(classes): 0 for a one-hot row, 1 for a uniform one."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1) / math.log(p.shape[1]) if p.shape[1] > 1 else p[:, 0] * 0


@timed
def predict(model: str, images: str, out: str, experiment: str, pipeline_run: str, publish_to: str = "") -> PredictionSummary:
    """Writes `out`/predictions.parquet (image, folder, class_id, class, confidence, entropy: a row per image,
    in the listing's order) and `out`/summary.json for the registered `model` (models:/<name>@<alias> or
    models:/<name>/<version>) on the PNG and JPEG files of `images` (imagefolder:<folder or s3://...>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tlpipe.registry import export_version, registered_version

    name, version = registered_version(model)
    files = image_files(images)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_version(name, version, tmp)
        classifier, _ = load_model(tmp, device())
    classifier.eval()
    classes, size = classifier.spec.classes, classifier.spec.input_size
    class_ids = {c: i for i, c in enumerate(classes)}
    schema = pa.schema([("image", pa.string()), ("folder", pa.string()), ("class_id", pa.int64()),
                        ("class", pa.string()), ("confidence", pa.float64()), ("entropy", pa.float64())])
    counts = np.zeros(len(classes), np.int64)
    confidence_sum = entropy_sum = 0.0
    unsure = in_class_folder = agreed = done = 0
    params = {"model": model, "model_name": name, "model_version": version, "images": images,
              "files": len(files.names), "image_size": size}
    with tracking.step_run("predict", experiment, pipeline_run, params, shared=params) as run, \
            pq.ParquetWriter(out_dir / PREDICTIONS_FILE, schema) as writer, torch.inference_mode():
        batch_size = max(1, PIXELS_PER_BATCH // (size * size))
        for batch in file_batches(files, size, batch_size):
            p = torch.softmax(classifier(batch.to(device(), non_blocking=True)).float(), 1).cpu()
            confidence, ids = p.max(1)
            entropy = _entropy(p)
            names = files.names[done : done + len(batch)]
            folders = [files.folder(n) for n in names]
            writer.write_table(pa.table({
                "image": names, "folder": folders, "class_id": ids.numpy().astype(np.int64),
                "class": [classes[i] for i in ids.tolist()], "confidence": confidence.double().numpy(),
                "entropy": entropy.double().numpy()}, schema=schema))
            counts += np.bincount(ids.numpy(), minlength=len(classes))
            confidence_sum += float(confidence.sum())
            entropy_sum += float(entropy.sum())
            unsure += int((confidence < UNSURE_BELOW).sum())
            for folder, predicted in zip(folders, ids.tolist()):
                if folder in class_ids:
                    in_class_folder += 1
                    agreed += int(class_ids[folder] == predicted)
            done += len(batch)
        summary = PredictionSummary(
            model=model, model_name=name, version=version, images=images, count=done, classes=list(classes),
            predicted={c: int(n) for c, n in zip(classes, counts)}, mean_confidence=confidence_sum / done,
            unsure_share=unsure / done, mean_entropy=entropy_sum / done, skipped_count=len(files.skipped),
            skipped=files.skipped[:20],
            folder_count=in_class_folder, folder_agreement=agreed / in_class_folder if in_class_folder else None)
        summary.save(out_dir / SUMMARY_FILE)
        metrics = {"images": done, "mean_confidence": summary.mean_confidence, "unsure_share": summary.unsure_share,
                   "mean_entropy": summary.mean_entropy}
        metrics |= {"predicted_share_" + METRIC_UNSAFE.sub("_", c): n / done for c, n in summary.predicted.items()}
        if summary.folder_agreement is not None:
            metrics["folder_agreement"] = summary.folder_agreement
        mlflow.log_metrics(metrics)
        tracking.log_to_parent(tracking.configure(), tracking.parent_of(run), metrics=metrics)
        mlflow.log_artifacts(str(out_dir), "predictions")
        if publish_to:
            mlflow.set_tag("tlpipe.published", publish(str(out_dir), publish_to, pipeline_run, "predictions"))
    return summary
