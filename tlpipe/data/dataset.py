"""The in-memory image set and its on-disk artifact form (safetensors + dataset.json)."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from tlpipe.errors import TlpipeError

FORMAT = "tlpipe.dataset/1"
UNLABELLED = -1  # label of an image whose class is unknown to training (the unlabelled target split)


def pixel_ids(images: np.ndarray) -> np.ndarray:
    """Each image's identity: the first 8 bytes of the SHA-256 of its pixels, as uint64. Exact
    duplicates share it, wherever they come from."""
    return np.array([int.from_bytes(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8], "little")
                     for image in images], dtype=np.uint64)


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W, 3), labels as int64 (N,) indexing `classes` (or UNLABELLED), and each
    image's stable identity as uint64 (N,): what splits are decided by (tlpipe.data.splits). It is the
    hash of the pixels unless a domain knows better (the built-in digit domains use their glyph's)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: np.ndarray | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.ids = pixel_ids(self.images) if self.ids is None else np.asarray(self.ids, dtype=np.uint64)
        if len(self.ids) != len(self.labels):
            raise ValueError("images and ids differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes, self.ids[index])

    def without_labels(self) -> "ImageSet":
        return ImageSet(self.images, np.full_like(self.labels, UNLABELLED), self.classes, self.ids)

    @property
    def is_labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != UNLABELLED).all())

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(self.classes).encode())
        digest.update(str(self.images.shape).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return "sha256:" + digest.hexdigest()


def save_dataset(directory: str | Path, data: ImageSet, **facts) -> dict:
    """Writes `data` as a dataset artifact directory and returns its metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = data.labels.astype(np.int64)
    save_file({"images": np.ascontiguousarray(data.images), "labels": labels, "ids": data.ids},
              str(directory / "data.safetensors"))
    counts = {name: int((labels == i).sum()) for i, name in enumerate(data.classes)}
    meta = {
        "format": FORMAT,
        **facts,
        "classes": data.classes,
        "shape": list(data.images.shape),
        "count": len(data),
        "labelled": data.is_labelled,
        "class_counts": counts,
        "content_hash": data.content_hash(),
    }
    (directory / "dataset.json").write_text(json.dumps(meta, indent=2))
    return meta


def dataset_meta(directory: str | Path) -> dict:
    """A dataset artifact's metadata (classes, counts, content hash) without reading its images."""
    directory = Path(directory)
    meta_path, data_path = directory / "dataset.json", directory / "data.safetensors"
    if not meta_path.is_file() or not data_path.is_file():
        raise TlpipeError(f"{directory} is not a tlpipe dataset artifact (dataset.json and data.safetensors expected).")
    return json.loads(meta_path.read_text())


def load_dataset(directory: str | Path) -> tuple[ImageSet, dict]:
    """Reads a dataset artifact, checking it is whole and unchanged since it was written."""
    directory = Path(directory)
    meta = dataset_meta(directory)
    data_path = directory / "data.safetensors"
    tensors = load_file(str(data_path))
    data = ImageSet(tensors["images"], tensors["labels"], list(meta["classes"]), tensors.get("ids"))
    labels = data.labels
    bad = labels[(labels != UNLABELLED) & ((labels < 0) | (labels >= len(data.classes)))]
    if len(bad):
        raise TlpipeError(
            f"dataset {directory} has label {int(bad[0])} out of range for its {len(data.classes)} classes."
        )
    if data.content_hash() != meta["content_hash"]:
        raise TlpipeError(f"dataset {directory} no longer matches the content hash in its dataset.json; ingest it again.")
    return data, meta
