import json
import shutil

import numpy as np
import pytest
from helpers import write_image_folder

from tlpipe.data import ImageSet, check_spec, load_dataset, load_domain, save_dataset, split_source, split_target
from tlpipe.data.builtin import digits, digits_m, syn_digits
from tlpipe.data.dataset import UNLABELLED
from tlpipe.errors import TlpipeError


def indexed_set(per_class=20, classes=4):
    """Images that carry their own index in their pixels, so splits can be checked for overlap."""
    n = per_class * classes
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return ImageSet(images, np.arange(n) % classes, [str(c) for c in range(classes)])


def ids(data):
    return set((data.images[:, 0, 0, 0].astype(int) + 256 * data.images[:, 0, 0, 1].astype(int)).tolist())


def test_digits_is_32px_rgb_with_ten_classes():
    data = digits()
    assert data.images.shape == (1797, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.classes == [str(d) for d in range(10)]
    assert data.images[:, :4].max() == 0  # the glyph sits inside a dark margin, as in MNIST


def test_digits_m_is_deterministic_per_seed():
    a, b, c = digits_m(3), digits_m(3), digits_m(4)
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert np.array_equal(a.labels, digits().labels)
    assert a.images.std(axis=(0, 1, 2)).min() > 20  # coloured photo backgrounds, not grey digits


def test_syn_digits_are_rendered_seeded_balanced_and_readable():
    a, b, c = syn_digits(0), syn_digits(0), syn_digits(1)
    assert a.images.shape == (2000, 32, 32, 3) and a.classes == [str(d) for d in range(10)]
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels).tolist() == [200] * 10
    # Every image shows a glyph: its pixels are not one flat colour.
    assert a.images.reshape(len(a), -1, 3).std(axis=1).max(axis=1).min() > 8
    assert load_domain("syn-digits", 32, 0).images.shape == (2000, 32, 32, 3)


@pytest.mark.slow
def test_syn_digits_look_like_their_class():
    """A classifier trained on rendered digits reads scikit-learn's handwritten ones far above chance."""
    import torch

    from tlpipe.evaluate import score
    from tlpipe.methods.supervised import pretrain
    from tlpipe.models import Classifier, ModelSpec
    from tlpipe.train import TrainConfig

    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", syn_digits(0).classes, 32))
    pretrain(model, syn_digits(0), TrainConfig(epochs=5, batch_size=64))
    assert score(model, digits()).accuracy > 0.3  # chance is 0.1


def test_source_split_is_disjoint_stratified_and_seeded():
    data = indexed_set(per_class=200)
    train, val, test = split_source(data, seed=1)
    parts = [ids(train), ids(val), ids(test)]
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert set().union(*parts) == ids(data)
    assert 0.15 < len(test) / len(data) < 0.25 and 0.06 < len(val) / len(data) < 0.14
    assert set(np.bincount(test.labels)) and min(np.bincount(test.labels)) > 20  # every class is tested
    again = split_source(data, seed=1)
    other = split_source(data, seed=2)
    assert ids(again[2]) == ids(test) and ids(other[2]) != ids(test)


def test_target_split_has_exact_counts_per_class_and_hides_unlabelled_labels():
    data = indexed_set(per_class=50)
    parts = split_target(data, 3, 5, seed=0)
    sets = [ids(parts.labelled), ids(parts.val), ids(parts.unlabelled), ids(parts.test)]
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert set().union(*sets) == ids(data)
    assert np.bincount(parts.labelled.labels).tolist() == [3, 3, 3, 3]
    assert np.bincount(parts.val.labels).tolist() == [5, 5, 5, 5]
    assert (parts.unlabelled.labels == UNLABELLED).all() and not parts.unlabelled.is_labelled
    assert ids(split_target(data, 3, 5, seed=0).test) == ids(parts.test)
    # Without enough held-out images a class keeps half of them for testing.
    small = split_target(indexed_set(per_class=20), 3, 10, seed=0)
    assert small.val_short and (np.bincount(small.test.labels) >= np.bincount(small.val.labels, minlength=4)).all()


def test_copies_of_one_image_stay_in_one_target_split():
    """Exact copies share an identity, hence a position: cut by image count, one copy could be a
    validation image (seen by the choice of model) and another a test image."""
    once = indexed_set(per_class=50)
    data = once.concatenate(once).concatenate(once)  # every image three times
    for seed in range(3):
        parts = split_target(data, 3, 5, seed)
        sets = [ids(parts.labelled), ids(parts.val), ids(parts.unlabelled), ids(parts.test)]
        assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])
        assert np.bincount(parts.val.labels).tolist() == [15] * 4  # 5 distinct images a class, 3 copies each
        assert np.bincount(parts.labelled.labels).tolist() == [9] * 4


def _splits(data, seed=0):
    """Each image's split, by its id."""
    named = dict(zip(("source_train", "source_val", "source_test"), split_source(data, seed)))
    target = split_target(data, 10, 10, seed)
    named |= {"labelled": target.labelled, "target_val": target.val, "unlabelled": target.unlabelled,
              "target_test": target.test}
    return {i: name for name, part in named.items() for i in ids(part)}


def test_splits_do_not_move_when_images_are_added_or_removed():
    """Adding 10% more images to every class and removing some never moves an image between training and
    held-out data; the source splits do not move at all; within the target's training and held-out
    images only the exact per-class counts shift, by at most the number of images added or removed."""
    classes, per_class = 4, 300
    data = indexed_set(per_class=per_class, classes=classes)
    grown = indexed_set(per_class=per_class * 11 // 10, classes=classes)  # the same images, then 30 new per class
    rng = np.random.default_rng(0)
    removed = set(rng.choice(len(data), 40, replace=False).tolist())
    shrunk = data.subset(np.array([i for i in range(len(data)) if i not in removed]))
    before = _splits(data)
    held_out = {"source_val", "source_test", "target_val", "target_test"}
    for changed, n_changed in ((grown, 30 * classes), (shrunk, len(removed))):
        after = _splits(changed)
        common = [i for i in before if i in after]
        assert len(common) >= len(data) - len(removed)
        for i in common:
            assert (before[i] in held_out) == (after[i] in held_out), (i, before[i], after[i])
            if before[i].startswith("source"):
                assert before[i] == after[i]
        moved = [i for i in common if before[i] != after[i]]
        assert len(moved) <= n_changed


def test_no_built_in_pair_shares_a_glyph_between_source_train_and_target_held_out():
    from sklearn.datasets import load_digits

    from tlpipe.data.dataset import pixel_ids

    raw = load_digits().images.astype(np.uint8)
    glyphs = pixel_ids(raw[..., None].repeat(3, axis=-1))
    for seed in (0, 1):
        domains = {name: load_domain(name, 32, seed) for name in ("digits", "digits-m", "syn-digits")}
        # digits and digits-m are drawn from scikit-learn's glyphs in order: their identity is the glyph's.
        assert np.array_equal(domains["digits"].ids, glyphs) and np.array_equal(domains["digits-m"].ids, glyphs)
        for source_name, source in domains.items():
            train = split_source(source, seed)[0]
            for target_name, target in domains.items():
                parts = split_target(target, 10, 10, seed)
                held_out = np.concatenate([parts.val.ids, parts.test.ids])
                assert not np.isin(held_out, train.ids).any(), (source_name, target_name, seed)


def test_exact_duplicates_across_folders_stay_out_of_source_train(tmp_path, tlpipe_home, capsys):
    from tlpipe.steps.common import SPLITS
    from tlpipe.steps.ingest import ingest

    source = write_image_folder(tmp_path / "source", per_class=40, seed=1)
    target = write_image_folder(tmp_path / "target", per_class=40, seed=2)
    for name in ("a", "b", "c"):  # the target has copies of 20 source images per class, renamed
        for i in range(20):
            (target / name / f"copy-{i}.png").write_bytes((source / name / f"{i}.png").read_bytes())
    out = {name: str(tmp_path / "out" / name) for name in SPLITS}
    ingest(f"imagefolder:{source}", f"imagefolder:{target}", 3, 0, 16, out, "dup", "run-dup",
                 target_val_per_class=2)
    loaded = {name: load_dataset(path)[0] for name, path in out.items()}
    held_out = np.concatenate([loaded["target_val"].ids, loaded["target_test"].ids])
    copies = np.isin(held_out, load_domain(f"imagefolder:{source}", 16, 0).ids)
    assert copies.sum() > 5  # some copies are held out in the target...
    assert not np.isin(held_out, loaded["source_train"].ids).any()  # ...and none of them is trained on
    assert f"{copies.sum()} of the {len(held_out)} target validation and test images are exact duplicates" in capsys.readouterr().out


def test_an_image_is_its_decoded_pixels_whatever_file_holds_it(tmp_path):
    """One picture saved twice as PNG with other compression (other bytes), at the stored size and
    larger (resized at ingest), is one identity, the same as the picture held in memory."""
    from PIL import Image

    rng = np.random.default_rng(0)
    picture, other = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    for name, array in (("a", picture), ("b", other)):
        (tmp_path / name).mkdir()
        Image.fromarray(array).save(tmp_path / name / "fast.png", compress_level=1)
        Image.fromarray(array).save(tmp_path / name / "small.png", compress_level=9)
        Image.fromarray(array).resize((32, 32), Image.Resampling.NEAREST).save(tmp_path / name / "large-1.png", compress_level=1)
        Image.fromarray(array).resize((32, 32), Image.Resampling.NEAREST).save(tmp_path / name / "large-9.png", compress_level=9)
    assert (tmp_path / "a" / "fast.png").read_bytes() != (tmp_path / "a" / "small.png").read_bytes()
    # Each class's files in name order: fast, large-1, large-9, small.
    (fast, large_1, large_9, small), (other_fast, other_large, _, other_small) = load_domain(
        f"imagefolder:{tmp_path}", 16, 0).ids.reshape(2, 4)
    held = ImageSet(np.stack([picture, other]), np.array([0, 1]), ["a", "b"]).ids
    assert fast == small == held[0] and other_fast == other_small == held[1] != held[0]
    assert large_1 == large_9 != other_large  # resized at ingest, the same way whatever the encoding


def test_data_version_changes_exactly_when_a_folder_does(tmp_path):
    from tlpipe.data.spec import data_version, data_versions

    folder = write_image_folder(tmp_path / "photos", per_class=3)
    spec = f"imagefolder:{folder}"
    first = data_version(spec)
    assert data_version(spec) == first  # listing alone: reading it again changes nothing
    image = folder / "a" / "0.png"
    image.write_bytes(image.read_bytes() + b"\0")  # rewritten
    rewritten = data_version(spec)
    (folder / "b" / "9.png").write_bytes((folder / "b" / "0.png").read_bytes())  # added
    added = data_version(spec)
    (folder / "c" / "1.png").unlink()  # removed
    assert len({first, rewritten, added, data_version(spec)}) == 4
    assert data_version("digits") == data_version("digits") != data_version("digits-m")
    versions = json.loads(data_versions("digits", spec))
    assert set(versions) == {"source", "target"} and versions["target"] == data_version(spec)
    table = tmp_path / "attributes.csv"
    table.write_text("class,round\na,1\n")
    assert json.loads(data_versions("digits", spec, str(table)))["attributes"].startswith(f"{table}@")
    with pytest.raises(TlpipeError, match="does not exist"):
        data_version(f"imagefolder:{tmp_path / 'nothing'}")


def test_k_shot_larger_than_a_class_names_the_class():
    with pytest.raises(TlpipeError, match=r"target class '0' has \d+ image\(s\) outside the held-out 30%.*target_labels_per_class=30"):
        split_target(indexed_set(), 30, 0, seed=0)


def test_image_folder_reads_classes_and_converts_modes(tmp_path):
    write_image_folder(tmp_path / "rgb", per_class=3)
    write_image_folder(tmp_path / "gray", per_class=2, mode="L", classes=("x",))
    write_image_folder(tmp_path / "rgba", per_class=2, mode="RGBA", classes=("x",))
    data = load_domain(f"imagefolder:{tmp_path / 'rgb'}", 8, seed=0)
    assert data.classes == ["a", "b", "c"] and data.images.shape == (9, 8, 8, 3)
    assert np.bincount(data.labels).tolist() == [3, 3, 3]
    for name in ("gray", "rgba"):
        assert load_domain(f"imagefolder:{tmp_path / name}", 8, seed=0).images.shape == (2, 8, 8, 3)


def test_missing_folder_and_unknown_spec_are_clear_errors(tmp_path):
    with pytest.raises(TlpipeError, match="image folder /no/such/dir does not exist"):
        check_spec("imagefolder:/no/such/dir")
    with pytest.raises(TlpipeError, match="unknown dataset spec 'mnist'"):
        check_spec("mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlpipeError, match="has no class sub-folders"):
        check_spec(f"imagefolder:{tmp_path / 'empty'}")


def test_corrupt_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "1.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(TlpipeError, match=r"cannot read image .*b/1\.png: it is corrupt or truncated"):
        load_domain(f"imagefolder:{root}", 8, seed=0)


def test_non_image_file_is_named(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    (root / "a" / "notes.txt").write_text("hello")
    with pytest.raises(TlpipeError, match=r"a/notes\.txt is not a PNG or JPEG image"):
        load_domain(f"imagefolder:{root}", 8, seed=0)


def test_dataset_artifact_round_trip_and_integrity(tmp_path):
    data = indexed_set()
    meta = save_dataset(tmp_path / "ds", data, split="x")
    loaded, loaded_meta = load_dataset(tmp_path / "ds")
    assert np.array_equal(loaded.images, data.images) and loaded.classes == data.classes
    assert loaded_meta["content_hash"] == meta["content_hash"] and meta["count"] == 80

    doctored = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    doctored["content_hash"] = "sha256:0"
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(doctored))
    with pytest.raises(TlpipeError, match="no longer matches the content hash"):
        load_dataset(tmp_path / "ds")

    bad = ImageSet(data.images, np.full(80, 7), data.classes)
    save_dataset(tmp_path / "bad", bad)
    with pytest.raises(TlpipeError, match="label 7 out of range for its 4 classes"):
        load_dataset(tmp_path / "bad")


def test_a_damaged_shard_stops_the_reader_with_the_artifact_named(tmp_path):
    save_dataset(tmp_path / "ds", indexed_set())
    stored = indexed_set().stored(79)[0]  # the PNG that save_dataset wrote
    chunk = next((tmp_path / "ds" / "shards").glob("chunk-*.bin"))
    raw = bytearray(chunk.read_bytes())
    raw[raw.find(stored) + len(stored) // 2] ^= 0xFF  # inside the last image's stored bytes
    chunk.write_bytes(bytes(raw))
    loaded, _ = load_dataset(tmp_path / "ds")  # the table is whole: opening reads no image
    assert np.array_equal(np.asarray(loaded.images[:79]), indexed_set().images[:79])
    with pytest.raises(TlpipeError, match=r"image 79 in .*ds does not match its recorded SHA-256; the dataset "
                                          "artifact is damaged"):
        loaded.images[79]


def test_shards_hold_bare_bytes_read_one_at_a_time_and_earlier_artifacts_still_read(tmp_path):
    """Training reads shards in a global random order. A one-field struct per image is a row LitData
    stores in an Arrow batch and decodes hundreds of rows to return one (20-500x slower at random than
    in order, benchmarks/results/scale.md); bare bytes are read alone."""
    from litdata.streaming.writer import BinaryWriter

    data = indexed_set()
    save_dataset(tmp_path / "ds", data)
    config = json.loads((tmp_path / "ds" / "shards" / "index.json").read_text())["config"]
    assert config["types"] == "bytes"
    loaded, _ = load_dataset(tmp_path / "ds")
    for i in np.random.default_rng(0).permutation(len(data)):
        assert np.array_equal(loaded.images[int(i)], data.images[i])

    # An artifact written by an earlier tlpipe: {"image": bytes} per item.
    shutil.copytree(tmp_path / "ds", tmp_path / "old", ignore=shutil.ignore_patterns("shards"))
    writer = BinaryWriter(str(tmp_path / "old" / "shards"), chunk_bytes=2**20)
    for i in range(len(data)):
        writer.add_item(i, {"image": data.stored(i)[0]})
    writer.done()
    writer.merge()
    old, _ = load_dataset(tmp_path / "old")
    assert np.array_equal(np.asarray(old.images), data.images)


def test_a_loader_worker_reads_a_random_batch_in_storage_order_and_returns_it_in_the_plans(tmp_path, monkeypatch):
    """At random, LitData switches chunks at almost every read; read in storage order, each chunk's images
    of a batch come together (benchmarks/results/scale.md)."""
    from tlpipe.data import shards
    from tlpipe.data.loader import _Decoded

    data = indexed_set()
    save_dataset(tmp_path / "ds", data)
    loaded, _ = load_dataset(tmp_path / "ds")
    positions, read = [], shards._Store.read
    monkeypatch.setattr(shards._Store, "read", lambda store, position: positions.append(position) or read(store, position))
    plan = [(int(i), 0) for i in np.random.default_rng(0).permutation(len(data))[:16]]
    (images,), labels = _Decoded(loaded.images, loaded.labels, ("none",)).__getitems__(plan)
    rows = [row for row, _ in plan]
    assert positions == sorted(rows)
    assert np.array_equal(images.numpy(), data.images[rows]) and np.array_equal(labels.numpy(), data.labels[rows])


def test_images_keep_their_file_bytes_unless_ingest_resizes_them(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "jpegs" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "jpegs" / name / f"{i}.jpg", quality=90)
    original = (tmp_path / "jpegs" / "a" / "0.jpg").read_bytes()
    same = load_domain(f"imagefolder:{tmp_path / 'jpegs'}", 16, seed=0)
    assert same.stored(0)[0] == original
    resized = load_domain(f"imagefolder:{tmp_path / 'jpegs'}", 8, seed=0)
    stored = resized.stored(0)[0]
    assert stored.startswith(b"\xff\xd8") and stored != original  # a JPEG again, encoded once at 8 px
    assert resized.images[0].shape == (8, 8, 3)
    # An exact duplicate file has the same identity wherever it is.
    (tmp_path / "jpegs" / "b" / "copy.jpg").write_bytes(original)
    again = load_domain(f"imagefolder:{tmp_path / 'jpegs'}", 16, seed=0)
    assert again.ids[0] == again.ids[np.flatnonzero(again.labels == 1)[-1]]


def test_ingest_memory_does_not_grow_with_the_folder(tmp_path, monkeypatch):
    """Peak traced memory of reading a folder, splitting it and writing the splits, for N and 4N
    images: shards are written as they fill (chunks shrunk here so that one chunk is small beside
    the images), so only the listing and the per-image table (ids, labels, digests) grow."""
    import tracemalloc

    from tlpipe.data import imagefolder, shards

    monkeypatch.setattr(shards, "CHUNK_BYTES", 32 * 1024)
    monkeypatch.setattr(imagefolder, "INLINE_FILES", 10**9)  # decode here, where tracemalloc sees it
    peaks = {}
    for n in (100, 400, 1600):  # the first warms up imports and caches
        root = write_image_folder(tmp_path / f"folder-{n}", classes=("a", "b"), per_class=n // 2, size=32)
        tracemalloc.start()
        data = load_domain(f"imagefolder:{root}", 32, 0, tmp_path / f"work-{n}")
        for i, part in enumerate(split_source(data, 0)):
            save_dataset(tmp_path / f"out-{n}-{i}", part)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    pixels = 1600 * 32 * 32 * 3
    assert peaks[1600] < 2 * peaks[400] and peaks[1600] - peaks[400] < pixels / 10, peaks


def test_an_image_too_large_to_decode_safely_is_refused(tmp_path, monkeypatch):
    from tlpipe.data import imagefolder

    root = write_image_folder(tmp_path / "d", per_class=2)
    monkeypatch.setattr(imagefolder, "MAX_PIXELS", 100)  # the real limit needs a 40-megapixel file
    with pytest.raises(TlpipeError, match=r"image .*a/0\.png is 16x16 pixels, over the 100 pixel limit"):
        load_domain(f"imagefolder:{root}", 8, seed=0)


def test_a_decompression_bomb_is_refused_by_name(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "d", per_class=2)
    # A tiny PNG file that claims 30000 x 30000 pixels: over PIL's own bomb threshold.
    Image.new("1", (30000, 30000)).save(root / "b" / "bomb.png", optimize=True)
    assert (root / "b" / "bomb.png").stat().st_size < 2_000_000
    with pytest.raises(TlpipeError, match=r"b/bomb\.png .*(decompression bomb|pixel limit)"):
        load_domain(f"imagefolder:{root}", 8, seed=0)


def test_an_empty_class_folder_is_named(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=2)
    (root / "zebra").mkdir()
    with pytest.raises(TlpipeError, match="class 'zebra' in .* has no images"):
        load_domain(f"imagefolder:{root}", 8, seed=0)


def test_an_empty_unlabelled_split_is_refused():
    one_class = indexed_set(classes=1)
    outside_held_out = len(split_source(one_class, 0)[0])  # source train is the same part: u >= 0.3
    with pytest.raises(TlpipeError, match="the unlabelled target split is empty"):
        split_target(one_class, outside_held_out, 0, seed=0)


def write_mnist(root, n=12, seed=0):
    """MNIST's own idx files, small, where torchvision.datasets.MNIST looks for them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes())
    return images, labels


def test_torchvision_dataset_reads_local_files(tmp_path):
    images, labels = write_mnist(tmp_path)
    data = load_domain(f"torchvision:MNIST:{tmp_path}", 28, seed=0)
    assert data.images.shape == (12, 28, 28, 3) and data.classes[0].startswith("0")
    assert np.array_equal(data.labels, labels)
    assert np.array_equal(data.images[..., 0], images) and np.array_equal(data.images[..., 2], images)
    assert load_domain(f"torchvision:MNIST:{tmp_path}", 32, seed=0).images.shape == (12, 32, 32, 3)


def test_torchvision_dataset_never_downloads(tmp_path):
    with pytest.raises(TlpipeError, match="torchvision dataset MNIST is not under .* does not download at run time"):
        load_domain(f"torchvision:MNIST:{tmp_path}", 28, seed=0)
    with pytest.raises(TlpipeError, match="torchvision has no dataset 'NoSuchSet'"):
        check_spec(f"torchvision:NoSuchSet:{tmp_path}")
    with pytest.raises(TlpipeError, match="unknown dataset spec 'torchvision:MNIST'"):
        check_spec("torchvision:MNIST")
