"""Built-in benchmark domains made from data that ships with scikit-learn.

`digits`: scikit-learn's 1,797 handwritten digits, upsampled from 8x8 to a 24 px glyph centred in
32x32 (the MNIST layout), white on black, 3 channels.
`digits-m`: the MNIST-M construction (Ganin & Lempitsky 2015) on those digits: each output pixel is
|crop - digit| per channel, the crop a random 32x32 patch of scikit-learn's sample photos.
`syn-digits`: the analogue of the DANN paper's Syn Numbers: digits rendered with the DejaVu fonts
that ship with matplotlib and Pillow's own font, at random size, position, rotation and stroke,
in random colours on a random background, blurred; seeded, and the same on every machine.
"""

import numpy as np

from tlpipe.data.dataset import ImageSet, pixel_ids

SIZE = 32
GLYPH = 24
CLASSES = [str(d) for d in range(10)]


def digits() -> ImageSet:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    raw = load_digits()
    glyphs = torch.from_numpy(raw.images / 16.0).float().unsqueeze(1)
    glyphs = F.interpolate(glyphs, size=(GLYPH, GLYPH), mode="bilinear", align_corners=False)
    pad = (SIZE - GLYPH) // 2
    canvas = F.pad(glyphs, (pad, pad, pad, pad)).clamp(0, 1)
    images = (canvas * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    # An image's identity is its 8x8 glyph's: digits-m recolours the same glyphs, so they split alike
    # in both domains, and glyphs that occur twice in scikit-learn's set count as one.
    glyph_ids = pixel_ids(raw.images.astype(np.uint8)[..., None].repeat(3, axis=-1))
    return ImageSet(np.ascontiguousarray(images), raw.target.astype(np.int64), CLASSES, glyph_ids)


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
    return ImageSet(out, base.labels, base.classes, base.ids)


SYN_PER_CLASS = 200
_SYN_CANVAS = 48  # rendered large, then downsampled to SIZE: antialiased strokes like a photo's


def _fonts() -> list[str]:
    """The fonts every tlpipe install has: matplotlib's DejaVu family (Pillow's own is added by name)."""
    from pathlib import Path

    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    # The "Display" variants hold only a few symbols, no digits.
    return sorted(str(p) for p in ttf.glob("DejaVu*.ttf") if "Display" not in p.name) + ["pillow-default"]


def syn_digits(seed: int) -> ImageSet:
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    images = np.empty((SYN_PER_CLASS * 10, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), SYN_PER_CLASS)
    for i, label in enumerate(labels):
        size = int(rng.integers(24, 40))
        name = fonts[rng.integers(len(fonts))]
        font = ImageFont.load_default(size) if name == "pillow-default" else ImageFont.truetype(name, size)
        background = rng.integers(0, 256, 3)
        # The digit's colour differs from the background by at least 96 in some channel: readable.
        foreground = rng.integers(0, 256, 3)
        while np.abs(foreground - background).max() < 96:
            foreground = rng.integers(0, 256, 3)
        glyph = Image.new("L", (_SYN_CANVAS, _SYN_CANVAS), 0)
        draw = ImageDraw.Draw(glyph)
        stroke = int(rng.integers(0, 3))
        left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font, stroke_width=stroke)
        x = (_SYN_CANVAS - (right - left)) / 2 - left + rng.uniform(-4, 4)
        y = (_SYN_CANVAS - (bottom - top)) / 2 - top + rng.uniform(-4, 4)
        draw.text((x, y), str(label), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
        mask = np.asarray(glyph, dtype=np.float32)[..., None] / 255
        canvas = Image.fromarray((mask * foreground + (1 - mask) * background).astype(np.uint8))
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
        images[i] = np.asarray(canvas.resize((SIZE, SIZE), Image.LANCZOS))
    return ImageSet(images, labels.astype(np.int64), CLASSES)
