"""Dataset specs, the strings users pass as `source` and `target`.

- `digits`, `digits-m`, `syn-digits`: built-in domains (tlpipe.data.builtin)
- `imagefolder:<dir>` or `imagefolder:s3://bucket/prefix`: one sub-folder per class
  (tlpipe.data.imagefolder); an S3 folder is downloaded to a temporary directory and read from there.
- `torchvision:<Name>:<root>`: a torchvision dataset whose files are already under <root>.
"""

import tempfile
from pathlib import Path

from tlpipe import storage
from tlpipe.data import builtin, imagefolder, torchvision_datasets
from tlpipe.data.dataset import ImageSet
from tlpipe.errors import TlpipeError

BUILTIN = {"digits": lambda seed: builtin.digits(), "digits-m": builtin.digits_m, "syn-digits": builtin.syn_digits}
FORMS = "digits, digits-m, syn-digits, imagefolder:<dir>, imagefolder:s3://bucket/prefix or torchvision:<Name>:<root>"


def _parse(spec: str) -> tuple[str, str]:
    kind, _, location = spec.partition(":")
    if kind in BUILTIN and not location:
        return kind, ""
    if kind == "imagefolder" and location:
        return kind, location
    name, _, root = location.partition(":")
    if kind == "torchvision" and name and root:
        return kind, location
    raise TlpipeError(f"unknown dataset spec '{spec}'; use {FORMS}.")


def spec_location(spec: str) -> str:
    """The folder or S3 prefix a spec reads ("" for built-in domains)."""
    kind, location = _parse(spec)
    return location.split(":", 1)[1] if kind == "torchvision" else location


def check_spec(spec: str, read: bool = True) -> None:
    """Cheap checks that can run before a pipeline starts (the full validation runs at ingest); with
    read=False only the spec's form, not its data."""
    kind, location = _parse(spec)
    if not read:
        if kind == "torchvision":
            torchvision_datasets.dataset_class(location.split(":", 1)[0])
        return
    if kind == "imagefolder" and storage.is_s3(location):
        storage.check_bucket(location)
        if not storage.list_keys(location):
            raise TlpipeError(f"image folder {location} is empty or does not exist; give a prefix with one sub-folder per class.")
    elif kind == "imagefolder":
        imagefolder.class_folders(Path(location))
    elif kind == "torchvision":
        name, root = location.split(":", 1)
        torchvision_datasets.dataset_class(name)
        if not Path(root).is_dir():
            raise TlpipeError(f"torchvision dataset root {root} does not exist; put the dataset's files there first.")


def load_domain(spec: str, image_size: int, seed: int) -> ImageSet:
    kind, location = _parse(spec)
    if kind == "imagefolder" and storage.is_s3(location):
        with tempfile.TemporaryDirectory() as tmp:
            storage.download(location.rstrip("/") + "/", tmp)
            return imagefolder.read_image_folder(tmp, image_size, shown_as=location)
    if kind == "imagefolder":
        return imagefolder.read_image_folder(location, image_size)
    if kind == "torchvision":
        name, root = location.split(":", 1)
        return torchvision_datasets.read_torchvision(name, root, image_size)
    data = BUILTIN[kind](seed)
    if data.images.shape[1] != image_size:
        data = ImageSet(_resize(data.images, image_size), data.labels, data.classes, data.ids)
    return data


def _resize(images, size: int):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
