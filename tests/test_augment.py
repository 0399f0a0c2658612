"""Source augmentation: per-image colour draws, labels kept with their images, seeded and resumable,
one global batch across ranks, and what it is for: a grey-trained model that reads inverted colours."""

import itertools

import numpy as np
import pytest
import torch

from tlpipe import augment, distributed
from tlpipe.data import load_domain
from tlpipe.errors import TlpipeError
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, predict
from tlpipe.train import Batches, TrainConfig


def test_colour_permutes_the_channels_and_inverts_each_image_on_its_own():
    images = torch.randint(0, 256, (300, 4, 4, 3), dtype=torch.uint8)
    out = augment.colour(images, torch.Generator().manual_seed(0))
    inverted, orders = 0, set()
    for before, after in zip(images, out):
        matches = [(order, flip) for order in itertools.permutations(range(3)) for flip in (False, True)
                   if torch.equal(after, 255 - before[..., list(order)] if flip else before[..., list(order)])]
        assert matches, "an output image is not a channel permutation of its input, inverted or not"
        order, flip = matches[0]
        orders.add(order)
        inverted += flip
    assert orders == set(itertools.permutations(range(3)))
    assert 0.35 < inverted / len(images) < 0.65
    assert torch.equal(out, augment.colour(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment.colour(images, torch.Generator().manual_seed(1)))


def test_photo_crops_and_flips_each_image_on_its_own_and_draws_from_the_generator():
    # Each image is a horizontal ramp: a crop of it is a (resized) stretch of the ramp, increasing or, flipped,
    # decreasing; a crop of a small area changes the ramp's range.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    images = ramp.view(1, 1, 64, 1).expand(200, 48, 64, 3).contiguous()
    before = torch.random.get_rng_state()
    out = augment.photo(images, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
    assert out.shape == images.shape and out.dtype == torch.uint8
    rows = out[:, 24, :, 0].float()
    steps = rows[:, 1:] - rows[:, :-1]
    flipped = (steps <= 0).all(1)
    assert ((steps >= 0).all(1) | flipped).all()  # every row is the ramp, one way or the other
    assert 0.35 < flipped.float().mean() < 0.65
    spans = (rows.max(1).values - rows.min(1).values)
    assert spans.min() < 200 and len(set(spans.tolist())) > 50  # each image cropped with its own draw
    assert torch.equal(out, augment.photo(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment.photo(images, torch.Generator().manual_seed(1)))


def test_unknown_augmentation_is_one_sentence():
    with pytest.raises(TlpipeError, match="unknown augmentation 'sepia'; use none, colour, photo"):
        augment.get("sepia")


def grey_images_that_encode_their_index(n):
    values = torch.arange(n, dtype=torch.uint8)  # < 128, so inverted images (255 - v) decode unambiguously
    return values.view(n, 1, 1, 1).expand(n, 2, 2, 3).contiguous(), torch.arange(n)


def decode(images):
    v = images[:, 0, 0, 0].long()
    return torch.where(v < 128, v, 255 - v)


def test_batches_keep_labels_with_their_augmented_images_and_resume_with_the_same_draws():
    images, labels = grey_images_that_encode_their_index(100)
    batches = Batches(images, labels, batch_size=16, generator=torch.Generator().manual_seed(0), augment="colour")
    seen_inverted = False
    for _ in range(20):  # past several epochs
        x, y = next(batches)
        assert torch.equal(decode(x), y)
        seen_inverted |= bool((x[:, 0, 0, 0] >= 128).any())
    assert seen_inverted
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in batches.state_dict().items()}
    first = next(batches)
    batches.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, next(batches)))


def test_ranks_take_their_shares_of_one_augmented_global_batch(monkeypatch):
    images, labels = grey_images_that_encode_their_index(64)

    def batch_of(rank, world):
        monkeypatch.setattr(distributed, "rank_world", lambda: (rank, world))
        batches = Batches(images, labels, batch_size=8, generator=torch.Generator().manual_seed(3), augment="colour")
        return [next(batches) for _ in range(3)]

    alone = batch_of(0, 1)
    shares = [batch_of(0, 2), batch_of(1, 2)]
    for step, (x, y) in enumerate(alone):
        assert torch.equal(shares[0][step][0], x[0::2]) and torch.equal(shares[1][step][0], x[1::2])
        assert torch.equal(shares[0][step][1], y[0::2]) and torch.equal(shares[1][step][1], y[1::2])


def test_a_colour_augmented_source_model_reads_inverted_recoloured_digits():
    digits = load_domain("digits", 32, 0)
    train, test = digits.subset(range(0, 1200)), digits.subset(range(1200, len(digits)))
    recoloured = 255 - test.images[..., [2, 0, 1]]
    accuracy = {}
    for name in ("none", "colour"):
        torch.manual_seed(0)
        model = Classifier(ModelSpec("small-cnn", digits.classes, 32))
        pretrain(model, train, TrainConfig(epochs=4, batch_size=64, augment=name))
        accuracy[name] = (predict(model, np.ascontiguousarray(recoloured)).numpy() == test.labels).mean()
    assert accuracy["colour"] > 0.8 and accuracy["colour"] > accuracy["none"] + 0.3, accuracy
