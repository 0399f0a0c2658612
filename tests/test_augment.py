"""Augmentation and the training loader: per-image draws from per-image seeds, labels kept with their
images, seeded and resumable, the same batches from the device and from DataLoader workers over
shards, disjoint ranks, and what colour augmentation is for: a grey-trained model that reads inverted
colours."""

import itertools

import numpy as np
import pytest
import torch

from tlpipe import augment, distributed, settings
from tlpipe.data import ImageSet, load_dataset, load_domain, loader, save_dataset
from tlpipe.data.loader import Batches
from tlpipe.errors import TlpipeError
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.scoring import predict
from tlpipe.train import TrainConfig


def seeds(n, seed):
    return torch.randint(2**62, (n,), generator=torch.Generator().manual_seed(seed))


def test_colour_permutes_the_channels_and_inverts_each_image_on_its_own():
    images = torch.randint(0, 256, (300, 4, 4, 3), dtype=torch.uint8)
    out = augment.colour(images, seeds(300, 0))
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
    assert torch.equal(out, augment.colour(images, seeds(300, 0)))
    assert not torch.equal(out, augment.colour(images, seeds(300, 1)))
    assert torch.equal(out[:7], augment.colour(images[:7], seeds(300, 0)[:7]))  # an image's draw is its own


def test_photo_crops_and_flips_each_image_on_its_own_under_its_seed():
    # Each image is a horizontal ramp: a crop of it is a (resized) stretch of the ramp, increasing or, flipped,
    # decreasing; a crop of a small area changes the ramp's range.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    images = ramp.view(1, 1, 64, 1).expand(200, 48, 64, 3).contiguous()
    before = torch.random.get_rng_state()
    out = augment.photo(images, seeds(200, 0))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
    assert out.shape == images.shape and out.dtype == torch.uint8
    rows = out[:, 24, :, 0].float()
    steps = rows[:, 1:] - rows[:, :-1]
    flipped = (steps <= 0).all(1)
    assert ((steps >= 0).all(1) | flipped).all()  # every row is the ramp, one way or the other
    assert 0.35 < flipped.float().mean() < 0.65
    spans = (rows.max(1).values - rows.min(1).values)
    assert spans.min() < 200 and len(set(spans.tolist())) > 50  # each image cropped with its own draw
    assert torch.equal(out, augment.photo(images, seeds(200, 0)))
    assert not torch.equal(out, augment.photo(images, seeds(200, 1)))
    assert torch.equal(out[5:9], augment.photo(images[5:9], seeds(200, 0)[5:9]))


def test_unknown_augmentation_is_one_sentence():
    with pytest.raises(TlpipeError, match="unknown augmentation 'sepia'; use none, colour, photo"):
        augment.get("sepia")


def grey_images_that_encode_their_index(n):
    """An ImageSet whose image i has every pixel i and label i (n <= 128, so that inverted images,
    255 - i, decode unambiguously)."""
    values = np.arange(n, dtype=np.uint8)
    images = np.ascontiguousarray(np.broadcast_to(values.reshape(n, 1, 1, 1), (n, 4, 4, 3)))
    return ImageSet(images, np.arange(n), [str(i) for i in range(n)])


def decode(images):
    v = images[:, 0, 0, 0].long().cpu()
    return torch.where(v < 128, v, 255 - v)


def test_batches_keep_labels_with_their_augmented_images_and_resume_with_the_same_draws():
    batches = Batches(grey_images_that_encode_their_index(100), 16, seed=0, augment="colour")
    seen_inverted = False
    for _ in range(20):  # past several epochs
        x, y = next(batches)
        assert torch.equal(decode(x), y.cpu())
        seen_inverted |= bool((x[:, 0, 0, 0] >= 128).any())
    assert seen_inverted
    saved = dict(batches.state_dict())
    first = next(batches)
    batches.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, next(batches)))


def sharded(data, tmp_path):
    save_dataset(tmp_path / "set", data)
    return load_dataset(tmp_path / "set")[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_over_shards_give_the_batches_the_device_gives(tmp_path, monkeypatch, workers):
    data = grey_images_that_encode_their_index(60)
    on_device = Batches(data, 8, seed=5, stream="source", augment="colour")
    monkeypatch.setattr(loader, "RESIDENT_BYTES", 0)
    streamed = Batches(sharded(data, tmp_path), 8, seed=5, stream="source", augment="colour", workers=workers)
    assert on_device.on_device and not streamed.on_device
    for _ in range(17):  # two epochs and a bit
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(next(on_device), next(streamed)))
    # A loader restarted from a saved state (a resumed step) goes on with the same batches.
    resumed = Batches(sharded(data, tmp_path / "again"), 8, seed=5, stream="source", augment="colour", workers=workers)
    resumed.load_state_dict(streamed.state_dict())
    for _ in range(5):
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(next(resumed), next(streamed)))
    # Two streams of one seed (source and target of an adaptation) shuffle differently.
    assert not torch.equal(next(Batches(data, 8, seed=5, stream="source"))[1],
                           next(Batches(data, 8, seed=5, stream="target"))[1])


def test_the_two_loaders_of_an_adaptation_share_the_steps_cpus_and_bound_the_batches_in_flight(tmp_path, monkeypatch):
    """Adaptation reads source and target at once: each loader taking all of the step's CPUs as workers,
    four batches ahead each, oversubscribed the CPUs twice and filled /dev/shm at 224 px."""
    monkeypatch.setattr(settings, "cpus", lambda: 8)
    monkeypatch.setattr(loader, "RESIDENT_BYTES", 0)
    data = sharded(grey_images_that_encode_their_index(60), tmp_path)
    alone = Batches(data, 8, seed=0)
    assert (alone.workers, alone.prefetch) == (8, loader.PREFETCH)
    source, target = (Batches(data, 8, seed=0, stream=s, share=2) for s in ("source", "target"))
    assert source.workers + target.workers == 8

    batch_bytes = 8 * int(np.prod(data.images.shape[1:]))
    monkeypatch.setattr(loader, "IN_FLIGHT_BYTES", 16 * batch_bytes)  # room for 16 batches, both loaders together
    source, target = (Batches(data, 8, seed=0, stream=s, share=2) for s in ("source", "target"))
    assert source.workers * source.prefetch + target.workers * target.prefetch <= 16


@pytest.mark.slow
def test_ranks_read_disjoint_shares_of_every_global_batch_whose_union_is_the_epoch(monkeypatch, tmp_path):
    data = grey_images_that_encode_their_index(64)
    monkeypatch.setattr(loader, "RESIDENT_BYTES", 0)
    data = sharded(data, tmp_path)

    def epoch_of(rank, world):
        monkeypatch.setattr(distributed, "rank_world", lambda: (rank, world))
        batches = Batches(data, 8, seed=3, augment="colour", workers=0)
        return [next(batches) for _ in range(batches.per_epoch)]

    alone = epoch_of(0, 1)
    shares = [epoch_of(0, 2), epoch_of(1, 2)]
    read = [torch.cat([y for _, y in share]).tolist() for share in shares]
    assert not set(read[0]) & set(read[1])
    assert sorted(read[0] + read[1]) == list(range(64))
    for step, (x, y) in enumerate(alone):
        assert torch.equal(shares[0][step][0], x[0::2]) and torch.equal(shares[1][step][0], x[1::2])
        assert torch.equal(shares[0][step][1], y[0::2]) and torch.equal(shares[1][step][1], y[1::2])


@pytest.mark.slow
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
