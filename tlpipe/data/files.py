"""Image files to predict on, in a folder or under an S3 prefix: listed at any depth (a file's first folder
is its class where it names one of the model's), then read and decoded by DataLoader worker processes a
batch at a time, in order, so that memory and disk hold a few batches whatever the number of files."""

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tlpipe import storage
from tlpipe.data.imagefolder import IMAGE_SUFFIXES, checked_image
from tlpipe.data.loader import PREFETCH, default_workers
from tlpipe.errors import TlpipeError

FORM = "imagefolder:<folder or s3://bucket/prefix>"


@dataclass
class ImageFiles:
    location: str  # a folder or s3://bucket/prefix
    names: list[str]  # the images' paths under it, "/"-separated, sorted
    skipped: list[str]  # files that are not PNG or JPEG, left out

    def folder(self, name: str) -> str:
        """The first folder of `name`'s path ("" for a file at the top)."""
        head, _, rest = name.partition("/")
        return head if rest else ""


def location_of(spec: str) -> str:
    if not spec.startswith("imagefolder:") or not spec.removeprefix("imagefolder:"):
        raise TlpipeError(f"images must be {FORM}, got '{spec}'.")
    return spec.removeprefix("imagefolder:").rstrip("/")


def check_location(location: str) -> None:
    """The folder exists, or the S3 prefix's bucket answers (cheap: the listing waits for the step)."""
    if storage.is_s3(location):
        storage.check_bucket(location)
    elif not Path(location).is_dir():
        raise TlpipeError(f"image folder {location} {'is not a directory' if Path(location).exists() else 'does not exist'}; "
                          f"give {FORM}.")


def _local_names(root: Path) -> list[str]:
    check_location(str(root))
    names = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        base = Path(folder).relative_to(root)
        names += [(base / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(names)


def image_files(spec: str) -> ImageFiles:
    """The PNG and JPEG files of an image folder spec, from a directory walk or an S3 listing (no file read)."""
    location = location_of(spec)
    names = storage.list_keys(location) if storage.is_s3(location) else _local_names(Path(location))
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        found = f" (only {len(names)} other files, e.g. {names[0]})" if names else ""
        raise TlpipeError(f"{location} holds no PNG or JPEG images{found}; give {FORM}.")
    return ImageFiles(location, images, [n for n in names if Path(n).suffix.lower() not in IMAGE_SUFFIXES])


def decoded(data: bytes, size: int, name: str) -> np.ndarray:
    """One image file's bytes as RGB uint8 pixels, size x size (bilinear, as ingest stores them)."""
    with checked_image(io.BytesIO(data), name) as image:
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


class _FileBatches(Dataset):
    """Item i: the i-th batch of the files, decoded, and "" — or None and the sentence that refused a file
    (raised in the step, not as a DataLoader worker's traceback)."""

    def __init__(self, files: ImageFiles, size: int, batch_size: int):
        self.files, self.size, self.batch_size = files, size, batch_size

    def __len__(self) -> int:
        return -(-len(self.files.names) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str]:
        names = self.files.names[i * self.batch_size : (i + 1) * self.batch_size]
        locations = [f"{self.files.location}/{name}" for name in names]
        contents: list[bytes] = [b""] * len(names)

        def fetch(j: int) -> None:
            try:
                contents[j] = storage.read_bytes(locations[j])
            except OSError as error:  # a local file removed or unreadable since the listing
                raise TlpipeError(f"cannot read {locations[j]}: {error.strerror or error}.") from None

        try:
            if storage.is_s3(self.files.location):  # requests wait on the network: several at once
                storage.in_parallel(fetch, range(len(names)))
            else:
                for j in range(len(names)):
                    fetch(j)
            return torch.from_numpy(np.stack([decoded(c, self.size, at) for c, at in zip(contents, locations)])), ""
        except TlpipeError as error:
            return None, str(error)


def _own_s3_client(_worker: int) -> None:
    """A forked worker opens its own S3 connections: the parent's pooled sockets are not for sharing."""
    storage.client.cache_clear()


def file_batches(files: ImageFiles, size: int, batch_size: int, workers: int | None = None):
    """The files' images in order, batch_size at a time, as uint8 N x size x size x 3 CPU tensors,
    decoded by worker processes a few batches ahead; the first unreadable file stops it in one sentence."""
    data = _FileBatches(files, size, batch_size)
    workers = min(default_workers() if workers is None else workers, len(data) - 1)  # none for one batch
    loader = DataLoader(data, batch_size=None, num_workers=max(0, workers), worker_init_fn=_own_s3_client,
                        prefetch_factor=PREFETCH if workers > 0 else None, pin_memory=torch.cuda.is_available())
    for batch, refused in loader:
        if refused:
            raise TlpipeError(refused)
        yield batch
