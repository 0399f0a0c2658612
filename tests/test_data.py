import json

import numpy as np
import pytest
from conftest import write_image_folder

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
    data = indexed_set()
    train, test = split_source(data, 0.25, seed=1)
    assert ids(train).isdisjoint(ids(test)) and ids(train) | ids(test) == ids(data)
    assert np.bincount(test.labels).tolist() == [5, 5, 5, 5]
    again, _ = split_source(data, 0.25, seed=1)
    other, _ = split_source(data, 0.25, seed=2)
    assert ids(again) == ids(train) and ids(other) != ids(train)


def test_target_split_has_k_labels_per_class_and_hides_unlabelled_labels():
    data = indexed_set()
    labelled, unlabelled, test = split_target(data, 3, 0.3, seed=0)
    parts = [ids(labelled), ids(unlabelled), ids(test)]
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert set().union(*parts) == ids(data)
    assert np.bincount(labelled.labels).tolist() == [3, 3, 3, 3]
    assert (unlabelled.labels == UNLABELLED).all() and not unlabelled.is_labelled
    assert ids(split_target(data, 3, 0.3, seed=0)[2]) == ids(test)


def test_k_shot_larger_than_a_class_names_the_class():
    with pytest.raises(TlpipeError, match=r"target class '0' has 20 image\(s\).*target_labels_per_class=15"):
        split_target(indexed_set(), 15, 0.3, seed=0)


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
    # 20 per class: 6 held out for testing and all 14 others labelled leaves nothing unlabelled.
    with pytest.raises(TlpipeError, match="the unlabelled target split is empty"):
        split_target(indexed_set(), 14, 0.3, seed=0)


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
