"""The image set every step works on, and its artifact form: dataset.json beside a shard folder
(tlpipe.data.shards) of the images' encoded bytes."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.data import shards
from tlpipe.data.shards import ShardedImages
from tlpipe.errors import TlpipeError

FORMAT = "tlpipe.dataset/2"
UNLABELLED = -1  # label of an image whose class is unknown to training (the unlabelled target split)


def pixel_ids(images: np.ndarray) -> np.ndarray:
    """Each image's identity: the first 8 bytes of the SHA-256 of its pixels, as uint64. Exact
    duplicates share it, wherever they come from."""
    return np.array([int.from_bytes(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8], "little")
                     for image in images], dtype=np.uint64)


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W, 3) (a numpy array, or ShardedImages read when used), labels as int64 (N,) indexing `classes` (or UNLABELLED), and each
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

    def concatenate(self, other: "ImageSet") -> "ImageSet":
        if isinstance(self.images, ShardedImages) and isinstance(other.images, ShardedImages):
            images = self.images.concatenate(other.images)
        else:
            images = np.concatenate([np.asarray(self.images), np.asarray(other.images)])
        return ImageSet(images, np.concatenate([self.labels, other.labels]), self.classes,
                        np.concatenate([self.ids, other.ids]))

    def stored(self, i: int) -> tuple[bytes, bytes]:
        """Image i as stored in an artifact (its encoded bytes) and their SHA-256: sharded images keep
        the bytes they were ingested with; images in memory are encoded as PNG (lossless)."""
        if isinstance(self.images, ShardedImages):
            return self.images.stored(i)
        encoded = shards.encode_png(np.ascontiguousarray(self.images[i]))
        return encoded, shards.digest(encoded)

    def digests(self) -> np.ndarray:
        if isinstance(self.images, ShardedImages):
            return self.images.digests()
        return np.array([np.frombuffer(self.stored(i)[1], np.uint8) for i in range(len(self))],
                        dtype=np.uint8).reshape(-1, 32)

    def without_labels(self) -> "ImageSet":
        return ImageSet(self.images, np.full_like(self.labels, UNLABELLED), self.classes, self.ids)

    @property
    def is_labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != UNLABELLED).all())

    def content_hash(self) -> str:
        return content_hash(self.classes, self.images.shape, self.ids, self.labels, self.digests())


def content_hash(classes: list[str], shape, ids: np.ndarray, labels: np.ndarray, digests: np.ndarray) -> str:
    """A set's hash from its table alone: classes, shape, and per image its id, label and the SHA-256 of
    its stored bytes. Computed while a set is written, never by reading all pixels again."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps(classes).encode())
    hasher.update(str(tuple(shape)).encode())
    hasher.update(np.ascontiguousarray(ids, dtype=np.uint64).tobytes())
    hasher.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    hasher.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return "sha256:" + hasher.hexdigest()


def save_dataset(directory: str | Path, data: ImageSet, **facts) -> dict:
    """Writes `data` as a dataset artifact directory, one image at a time, and returns its metadata.
    Sharded images are copied as stored, never decoded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writer = shards.ShardWriter(directory)
    for i in range(len(data)):
        stored, image_digest = data.stored(i)
        writer.add(stored, int(data.labels[i]), int(data.ids[i]), image_digest)
    table = writer.close()
    labels = table["labels"]
    meta = {
        "format": FORMAT,
        **facts,
        "classes": data.classes,
        "shape": list(data.images.shape),
        "count": len(data),
        "labelled": data.is_labelled,
        "class_counts": {name: int((labels == i).sum()) for i, name in enumerate(data.classes)},
        "content_hash": content_hash(data.classes, data.images.shape, table["ids"], labels, table["digests"]),
    }
    (directory / "dataset.json").write_text(json.dumps(meta, indent=2))
    return meta


def dataset_meta(directory: str | Path) -> dict:
    """A dataset artifact's metadata (classes, counts, content hash) without reading its images."""
    directory = Path(directory)
    meta_path = directory / "dataset.json"
    if not meta_path.is_file() or not (directory / shards.TABLE).is_file():
        raise TlpipeError(f"{directory} is not a tlpipe dataset artifact (dataset.json and {shards.TABLE} expected).")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise TlpipeError(f"{directory} is a dataset artifact of format {meta.get('format')}, not {FORMAT}; "
                          "ingest it again with this tlpipe.")
    return meta


def load_dataset(directory: str | Path) -> tuple[ImageSet, dict]:
    """Opens a dataset artifact (its table; images are read when used), checking that the table is
    whole and unchanged since it was written. Each image is checked when it is read."""
    directory = Path(directory)
    meta = dataset_meta(directory)
    table = shards.read_table(directory)
    images = ShardedImages.of_folder(directory, int(meta["shape"][1]), len(table["ids"]))
    data = ImageSet(images, table["labels"], list(meta["classes"]), table["ids"])
    labels = data.labels
    bad = labels[(labels != UNLABELLED) & ((labels < 0) | (labels >= len(data.classes)))]
    if len(bad):
        raise TlpipeError(
            f"dataset {directory} has label {int(bad[0])} out of range for its {len(data.classes)} classes."
        )
    if content_hash(data.classes, images.shape, table["ids"], labels, table["digests"]) != meta["content_hash"]:
        raise TlpipeError(f"dataset {directory} no longer matches the content hash in its dataset.json; ingest it again.")
    return data, meta
