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


def test_photo_crops_each_image_on_its_own_under_its_seed_and_never_mirrors():
    # Each image is a horizontal ramp: a crop of it is a (resized) stretch of the ramp, increasing (a flip
    # would make it decrease); a crop of a small area changes the ramp's range.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    images = ramp.view(1, 1, 64, 1).expand(200, 48, 64, 3).contiguous()
    before = torch.random.get_rng_state()
    out = augment.photo(images, seeds(200, 0))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
    assert out.shape == images.shape and out.dtype == torch.uint8
    rows = out[:, 24, :, 0].float()
    assert (rows[:, 1:] >= rows[:, :-1]).all()  # every row is the ramp, left to right
    spans = (rows.max(1).values - rows.min(1).values)
    assert spans.min() < 200 and len(set(spans.tolist())) > 50  # each image cropped with its own draw
    assert torch.equal(out, augment.photo(images, seeds(200, 0)))
    assert not torch.equal(out, augment.photo(images, seeds(200, 1)))
    assert torch.equal(out[5:9], augment.photo(images[5:9], seeds(200, 0)[5:9]))


def test_crop_shifts_each_image_by_at_most_an_eighth_repeating_its_edges():
    # Pixel (y, x) holds y * 32 + x: a shifted image is the original's index grid moved by (dy, dx), clamped.
    index = torch.arange(32 * 32).view(32, 32)
    images = torch.stack([index // 32 * 8, index % 32 * 8, torch.zeros_like(index)], -1).to(torch.uint8)
    images = images.expand(1000, 32, 32, 3).contiguous()
    out = augment.crop(images, seeds(1000, 0))
    shifts = set()
    for image in out:
        dy, dx = int(image[0, 0, 0]) // 8, int(image[0, 0, 1]) // 8  # where the top-left pixel came from
        dy = dy if dy else -(int((image[:, 0, 0] == 0).sum()) - 1)
        dx = dx if dx else -(int((image[0, :, 1] == 0).sum()) - 1)
        rows = (torch.arange(32) + dy).clamp(0, 31)
        cols = (torch.arange(32) + dx).clamp(0, 31)
        assert torch.equal(image, images[0][rows][:, cols]), (dy, dx)
        assert abs(dy) <= 4 and abs(dx) <= 4
        shifts.add((dy, dx))
    assert len(shifts) == 81  # every shift of up to 4 px either way, each image with its own draw
    assert torch.equal(out[3:5], augment.crop(images[3:5], seeds(1000, 0)[3:5]))


def test_flip_mirrors_half_of_the_images_and_only_when_asked():
    images = torch.randint(0, 256, (400, 8, 8, 3), dtype=torch.uint8)
    out = augment.flip(images, seeds(400, 0))
    mirrored = torch.tensor([torch.equal(a, b.flip(1)) for a, b in zip(out, images)])
    assert all(torch.equal(a, b) for a, b, m in zip(out, images, mirrored) if not m)
    assert 0.4 < mirrored.float().mean() < 0.6
    assert augment.get("photo+flip") is not None
    for name in ("crop", "photo", "strong"):  # no recipe tlpipe picks on its own mirrors an image
        ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 32, 1).expand(50, 32, 32, 3)
        rows = augment.get(name)(ramp.contiguous(), seeds(50, 1))[:, 16, 8:24, 0].float()
        assert ((rows[:, -1] - rows[:, 0]) >= 0).float().mean() > 0.9, name


def test_strong_is_a_seeded_draw_of_its_own_per_image_that_leaves_the_global_rng():
    images = torch.from_numpy(load_domain("digits", 32, seed=0).images[:64].copy())
    before = torch.random.get_rng_state()
    out = augment.strong(images, seeds(64, 0))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment.strong(images, seeds(64, 0)))
    assert torch.equal(out[10:12], augment.strong(images[10:12], seeds(64, 0)[10:12]))
    changed = (out.float() - images.float()).abs().mean((1, 2, 3))
    assert (changed > 1).float().mean() > 0.9  # strong: nearly every image visibly altered
    assert not torch.equal(out, augment.strong(images, seeds(64, 1)))


def test_combined_augmentations_apply_in_order_each_part_under_a_seed_of_its_own():
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8)
    s = seeds(64, 0)
    combined = augment.get("crop+flip")(images, s)
    assert torch.equal(combined, augment.flip(augment.crop(images, s), augment.derived_seeds(s, 1000 + 1)))
    assert not torch.equal(augment.derived_seeds(s, 1), s)
    assert (augment.derived_seeds(s, 1) >= 0).all()


@pytest.mark.parametrize(("spec", "side", "expected"), [
    ("imagefolder:/data/glyphs", 28, "crop"), ("imagefolder:/data/glyphs", 64, "crop"),
    ("imagefolder:s3://b/photos", 224, "photo"), ("digits", 32, "none"), ("torchvision:CIFAR10", 32, "none"),
])
def test_auto_shifts_small_folder_images_crops_large_ones_and_leaves_the_builtin_domains(spec, side, expected):
    assert augment.resolve("auto", {"spec": spec, "shape": [10, side, side, 3]}) == expected
    assert augment.resolve("photo+flip", {"spec": spec, "shape": [10, side, side, 3]}) == "photo+flip"


def test_unknown_augmentation_is_one_sentence():
    with pytest.raises(TlpipeError, match="unknown augmentation 'sepia'; use none, crop, photo, flip, colour, strong, auto"):
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


@pytest.mark.parametrize("workers", [0, 2])
def test_views_are_the_same_images_each_augmented_on_its_own_from_device_and_workers(tmp_path, monkeypatch, workers):
    data = grey_images_that_encode_their_index(60)
    views = ("none", "crop", "strong")
    on_device = Batches(data, 8, seed=3, stream="target", augment=views, labels=False)
    monkeypatch.setattr(loader, "RESIDENT_BYTES", 0)
    streamed = Batches(sharded(data, tmp_path), 8, seed=3, stream="target", augment=views, labels=False,
                       workers=workers)
    plain = Batches(data, 8, seed=3, stream="target", labels=False)
    for _ in range(9):
        batch, expected = next(on_device), next(streamed)
        raw, shifted, strong = batch
        assert len(batch) == 3 and torch.equal(raw, next(plain)[0])  # the first view is the plain batch
        assert torch.equal(decode(shifted), decode(raw))  # the same images in every view...
        assert not torch.equal(strong, raw)  # ...each view drawn on its own
        assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(batch, expected))


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


def test_a_device_resident_epoch_plan_is_copied_once_and_each_batch_is_a_slice_of_it():
    """On a GPU, building each step's indices and seeds on the host and copying them synchronises the
    host with the device every step. The plan of an epoch is copied once; every batch is a view of it."""
    plan = loader._Plan(64, 8, seed=0, stream="", epoch=0, step=0)
    spans = plan.spans(on=torch.device("cpu"))
    first = [next(spans) for _ in range(8)]  # one epoch: 64 images, batches of 8
    for index, seeds in first:
        assert index.untyped_storage().data_ptr() == first[0][0].untyped_storage().data_ptr()
        assert seeds.untyped_storage().data_ptr() == first[0][1].untyped_storage().data_ptr()
    order, seeds = loader.epoch_plan(64, 0, "", 0)
    assert torch.equal(torch.cat([i for i, _ in first]), order) and torch.equal(torch.cat([s for _, s in first]), seeds)
    assert next(spans)[0].untyped_storage().data_ptr() != first[0][0].untyped_storage().data_ptr()  # the next epoch's
