"""torchvision datasets from files already on disk: `torchvision:<Name>:<root>`.

tlpipe never downloads at run time: the dataset's files must be under <root> as torchvision lays
them out (for example <root>/MNIST/raw/*-ubyte). The training split is read where the dataset has
one (`train=True`).
"""

import inspect

import numpy as np
from PIL import Image

from tlpipe.data.dataset import ImageSet
from tlpipe.errors import TlpipeError


def dataset_class(name: str):
    import torchvision.datasets as datasets

    cls = getattr(datasets, name, None)
    if not inspect.isclass(cls):
        raise TlpipeError(f"torchvision has no dataset '{name}'; use a class name from torchvision.datasets, e.g. MNIST.")
    return cls


def read_torchvision(name: str, root: str, size: int) -> ImageSet:
    cls = dataset_class(name)
    kwargs = {"root": root, "download": False}
    if "train" in inspect.signature(cls).parameters:
        kwargs["train"] = True
    try:
        dataset = cls(**kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as error:
        raise TlpipeError(
            f"torchvision dataset {name} is not under {root} ({str(error).splitlines()[0]}); tlpipe does not "
            "download at run time: put its files there first."
        ) from None
    images, labels = [], []
    for image, label in dataset:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        images.append(np.asarray(rgb, dtype=np.uint8))
        labels.append(int(label))
    if not images:
        raise TlpipeError(f"torchvision dataset {name} under {root} is empty.")
    labels = np.asarray(labels, dtype=np.int64)
    classes = [str(c) for c in getattr(dataset, "classes", [])] or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise TlpipeError(f"torchvision dataset {name} under {root} has labels outside its {len(classes)} classes.")
    return ImageSet(np.stack(images), labels, classes)
