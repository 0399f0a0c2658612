"""Built-in benchmark domains made from data that ships with scikit-learn.

`digits`: scikit-learn's 1,797 handwritten digits, upsampled from 8x8 to a 24 px glyph centred in
32x32 (the MNIST layout), white on black, 3 channels.
`digits-m`: the MNIST-M construction (Ganin & Lempitsky 2015) on those digits: each output pixel is
|crop - digit| per channel, the crop a random 32x32 patch of scikit-learn's sample photos.
"""

import numpy as np
import torch
import torch.nn.functional as F

from tlpipe.data.dataset import ImageSet

SIZE = 32
GLYPH = 24
CLASSES = [str(d) for d in range(10)]


def digits() -> ImageSet:
    from sklearn.datasets import load_digits

    raw = load_digits()
    glyphs = torch.from_numpy(raw.images / 16.0).float().unsqueeze(1)
    glyphs = F.interpolate(glyphs, size=(GLYPH, GLYPH), mode="bilinear", align_corners=False)
    pad = (SIZE - GLYPH) // 2
    canvas = F.pad(glyphs, (pad, pad, pad, pad)).clamp(0, 1)
    images = (canvas * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return ImageSet(np.ascontiguousarray(images), raw.target.astype(np.int64), CLASSES)


def digits_m(seed: int) -> ImageSet:
    from sklearn.datasets import load_sample_images

    base = digits()
    photos = [np.asarray(p, dtype=np.int16) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty_like(base.images)
    for i, digit in enumerate(base.images.astype(np.int16)):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - SIZE + 1)
        left = rng.integers(photo.shape[1] - SIZE + 1)
        crop = photo[top : top + SIZE, left : left + SIZE]
        out[i] = np.abs(crop - digit).astype(np.uint8)
    return ImageSet(out, base.labels, base.classes)
