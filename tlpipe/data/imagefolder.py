"""Image folders: one sub-folder per class holding PNG or JPEG files.

Every file is decoded and checked at ingest (in worker processes), so a broken image stops the run
with its path before any training starts. Grayscale, palette and RGBA images are converted to RGB,
not rejected. Images are written to shards as they are checked: memory does not grow with the folder.
"""

import collections
import contextlib
import io
import math
import multiprocessing
import os
import warnings
from array import array
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tlpipe import settings
from tlpipe.data import shards
from tlpipe.data.dataset import ImageSet, pixel_ids
from tlpipe.data.shards import ShardedImages
from tlpipe.errors import TlpipeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Refuse images whose pixel count suggests a decompression bomb (PIL warns at 89M, fails at 2x).
MAX_PIXELS = 40_000_000
BATCH_FILES = 64  # files a worker process checks per task
INLINE_FILES = 512  # a worker process per this many files, up to the CPUs; one: no worker processes


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of `root`, sorted by name; raises for a missing or empty root."""
    if not root.exists():
        raise TlpipeError(f"image folder {root} does not exist; give a directory with one sub-folder per class.")
    if not root.is_dir():
        raise TlpipeError(f"image folder {root} is not a directory; give a directory with one sub-folder per class.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TlpipeError(f"image folder {root} has no class sub-folders; put each class's images in a folder named after it.")
    return folders


@contextlib.contextmanager
def checked_image(source, name: str):
    """The image at `source` (a path or a binary file) opened and loaded, refused in one sentence naming
    `name` when it is corrupt, truncated or a decompression bomb (also when that shows only as the body
    of the `with` converts it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise TlpipeError(
                        f"image {name} is {image.width}x{image.height} pixels, over the {MAX_PIXELS:,} pixel limit "
                        "for safe decoding; shrink it first."
                    )
                image.load()
                yield image
    except TlpipeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TlpipeError(f"image {name} is too large to decode safely (decompression bomb); shrink it first.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise TlpipeError(f"cannot read image {name}: it is corrupt or truncated ({error}).") from None


def stored_image(path: str, size: int, shown_as: str | None = None) -> tuple[bytes, int]:
    """Decodes and checks one image file; returns the bytes to store (the file's own when it is
    already an RGB JPEG or PNG of size x size, else the image in RGB resized and encoded once: JPEG at
    quality 95 from a JPEG, PNG from anything else) and the image's identity: the hash of its decoded
    pixels at that size (dataset.pixel_ids), as for images held in memory, so that copies of one picture
    in another file format or under another name are one image to the splits."""
    with checked_image(path, shown_as or path) as image:
        if image.mode == "RGB" and image.size == (size, size) and image.format in ("JPEG", "PNG"):
            return Path(path).read_bytes(), int(pixel_ids(np.asarray(image)[None])[0])
        jpeg = image.format == "JPEG"
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=95) if jpeg else rgb.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue(), int(pixel_ids(np.asarray(rgb)[None])[0])


def _store_many(files: list[tuple[str, str]], size: int) -> list[tuple[bytes, int]]:
    return [stored_image(path, size, name) for path, name in files]


def listing(root: str | Path, shown_as: str | None = None) -> tuple[list[str], list[str], array]:
    """The class names, and the path (relative to root) and label of every image under root/<class>/.
    Paths only: a million of them are about 60 MB."""
    root = Path(root)
    folders = class_folders(root)
    shown = (shown_as or str(root)).rstrip("/")
    files, labels = [], array("q")
    for label, folder in enumerate(folders):
        names = sorted(p.name for p in os.scandir(folder) if p.is_file() and not p.name.startswith("."))
        if not names:
            raise TlpipeError(f"class '{folder.name}' in {shown} has no images; add PNG or JPEG files or remove the folder.")
        for name in names:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise TlpipeError(f"{shown}/{folder.name}/{name} is not a PNG or JPEG image; remove it from the class folder.")
            files.append(f"{folder.name}/{name}")
            labels.append(label)
    return [f.name for f in folders], files, labels


def _stored_in_order(root: Path, shown: str, files: list[str], size: int):
    """Each file's stored bytes, in order, decoded and checked in worker processes with at most a few
    batches in flight, so memory holds a few batches whatever the folder's size. Small folders are
    read in this process (starting workers costs more than they save)."""
    workers = min(settings.cpus(), math.ceil(len(files) / INLINE_FILES))
    batches = ([(str(root / f), f"{shown}/{f}") for f in files[i : i + BATCH_FILES]]
               for i in range(0, len(files), BATCH_FILES))
    if workers <= 1:
        for batch in batches:
            yield from _store_many(batch, size)
        return
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = collections.deque()
        for batch in batches:
            pending.append(pool.submit(_store_many, batch, size))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def read_image_folder(root: str | Path, size: int, staging: str | Path, shown_as: str | None = None) -> ImageSet:
    """Checks every image under root/<class>/ and writes it to a shard folder at `staging`; the set
    returned reads its images from there. Errors name files under `shown_as` (e.g. an S3 URI)."""
    root = Path(root)
    classes, files, labels = listing(root, shown_as)
    writer = shards.ShardWriter(staging)
    for label, (stored, image_id) in zip(labels, _stored_in_order(root, (shown_as or str(root)).rstrip("/"), files, size)):
        writer.add(stored, label, image_id)
    table = writer.close()
    return ImageSet(ShardedImages.of_folder(staging, size, len(table["ids"])), table["labels"], classes, table["ids"])
