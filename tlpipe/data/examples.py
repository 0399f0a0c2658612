"""Example photo folders made offline: what the quick start, the scale benchmark and the photo-folder
tests ingest (`tlpipe examples photos DIR`).

Photo-like JPEGs at 224 px in class sub-folders: a smooth colour field whose hue tells the class
apart, shapes and grain, compressing to about the size of a real photo at that size. `shift` changes
the look the way a second camera or site would (a tint and more blur): a target domain.
"""

import io
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = 10
SIZE = 224


def photo(index: int, seed: int, shift: float = 0.0) -> tuple[int, bytes]:
    """The JPEG of photo `index` (class index % CLASSES) of the folder made with `seed`."""
    rng = np.random.default_rng([seed, index])
    label = index % CLASSES
    hue = np.array([np.cos(label), np.sin(label * 1.7), np.cos(label * 2.3)]) * 60 + 128
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    field = hue + rng.normal(0, 25, 3) + ramp * rng.normal(0, 60, 3) + shift * np.array([40, 0, -40])
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        (x0, x1), (y0, y1) = sorted(rng.integers(0, SIZE, 2)), sorted(rng.integers(0, SIZE, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2) + 2 * shift))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (SIZE, SIZE, 3)).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return label, buffer.getvalue()


def _write(args) -> int:
    root, start, stop, seed, shift = args
    written = 0
    for i in range(start, stop):
        label, data = photo(i, seed, shift)
        (Path(root) / f"class_{label}" / f"{i:07d}.jpg").write_bytes(data)
        written += len(data)
    return written


def make_folder(root: Path, n: int, seed: int, shift: float = 0.0) -> int:
    """Writes n photos under root/class_<k>/ on every CPU; returns the folder's size in bytes."""
    root = Path(root)
    for label in range(CLASSES):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
    spans = [(str(root), i, min(i + 500, n), seed, shift) for i in range(0, n, 500)]
    with multiprocessing.get_context("forkserver").Pool(len(os.sched_getaffinity(0))) as pool:
        return sum(pool.map(_write, spans))
