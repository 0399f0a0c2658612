"""Image folders: one sub-folder per class holding PNG or JPEG files.

Every file is decoded and checked at ingest, so a broken image stops the run with its path before
any training starts. Grayscale, palette and RGBA images are converted to RGB, not rejected.
"""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from tlpipe.data.dataset import ImageSet
from tlpipe.errors import TlpipeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Refuse images whose pixel count suggests a decompression bomb (PIL warns at 89M, fails at 2x).
MAX_PIXELS = 40_000_000


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


def read_image(path: Path, size: int, shown_as: str | None = None) -> np.ndarray:
    """Decodes one image to uint8 (size, size, 3), naming the file (or `shown_as`) in any error."""
    name = shown_as or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise TlpipeError(
                        f"image {name} is {image.width}x{image.height} pixels, over the {MAX_PIXELS:,} pixel limit "
                        "for safe decoding; shrink it before ingest."
                    )
                image.load()
                rgb = image.convert("RGB")
    except TlpipeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TlpipeError(f"image {name} is too large to decode safely (decompression bomb); shrink it before ingest.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise TlpipeError(f"cannot read image {name}: it is corrupt or truncated ({error}).") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def read_image_folder(root: str | Path, size: int, shown_as: str | None = None) -> ImageSet:
    """Reads every image under root/<class>/; errors name files under `shown_as` (e.g. an S3 URI)."""
    root = Path(root)
    folders = class_folders(root)
    shown = (shown_as or str(root)).rstrip("/")
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise TlpipeError(f"class '{folder.name}' in {shown} has no images; add PNG or JPEG files or remove the folder.")
        for path in files:
            name = f"{shown}/{path.relative_to(root).as_posix()}"
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise TlpipeError(f"{name} is not a PNG or JPEG image; remove it from the class folder.")
            images.append(read_image(path, size, name))
            labels.append(label)
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), [f.name for f in folders])
