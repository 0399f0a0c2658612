"""Multi-task learning, progressive networks and zero-shot learning by attributes: the mechanics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import colour_set, trained_source

from tlpipe.data import ImageSet, load_dataset
from tlpipe.data.attributes import DIGITS, read_table, signatures
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import score
from tlpipe.methods.finetune import finetune, parse_strategy
from tlpipe.methods.multitask import _Tasks
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, load_model, save_model
from tlpipe.steps.common import SPLITS
from tlpipe.steps.ingest import ingest
from tlpipe.train import TrainConfig


def test_new_strategies_parse_and_bad_ones_are_refused():
    assert parse_strategy("progressive") == ("progressive", 0.0)
    assert parse_strategy("multitask") == ("multitask", 1.0)
    assert parse_strategy("multitask:0.3") == ("multitask", 0.3)
    assert parse_strategy("zero-shot:embedding") == ("zero-shot", "embedding")
    for bad in ("zero-shot", "zero-shot:nearest", "multitask:-1", "progressive:2"):
        with pytest.raises(TlpipeError, match="unknown fine-tuning strategy"):
            parse_strategy(bad)


# Multi-task ----------------------------------------------------------------------------------------

def test_shared_trunk_gets_gradients_from_every_task():
    source = trained_source()
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32, tasks=["source"])).train()
    model.load_state_dict(source.state_dict(), strict=False)
    tasks = _Tasks(model)
    data = colour_set(4)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    trunk = model.blocks[0][0].weight
    for which in (0, 1):  # 0: the source task alone, 1: the target task alone
        model.zero_grad()
        F.cross_entropy(tasks(images, images)[which], labels).backward()
        assert trunk.grad is not None and trunk.grad.abs().sum() > 0
        own, other = (model.tasks["source"], model.head) if which == 0 else (model.head, model.tasks["source"])
        assert own.weight.grad.abs().sum() > 0
        assert other.weight.grad is None or other.weight.grad.abs().sum() == 0


def test_multitask_trains_both_heads_and_saves_them(tmp_path):
    source = trained_source()
    tuned = finetune(source, colour_set(4, seed=1, shift=40), "multitask:0.5", TrainConfig(epochs=3, batch_size=8),
                     source=colour_set(seed=2))
    assert tuned.spec.tasks == ["source"]
    assert not torch.equal(tuned.tasks["source"].weight, source.head.weight)  # the source task kept training
    save_model(tmp_path / "m", tuned)
    loaded, _ = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.tasks["source"].weight, tuned.tasks["source"].weight)
    with pytest.raises(TlpipeError, match="needs the source training images"):
        finetune(source, colour_set(4), "multitask", TrainConfig(epochs=1))


# Progressive networks ------------------------------------------------------------------------------

def test_progressive_column_1_is_bit_identical_after_training():
    source = trained_source()
    before = {k: v.clone() for k, v in source.blocks.state_dict().items()}
    tuned = finetune(source, colour_set(4, seed=1, shift=40), "progressive", TrainConfig(epochs=3, batch_size=8, lr=0.05))
    assert tuned.spec.progressive and len(tuned.adapters) == len(tuned.blocks)
    after = tuned.column1.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():  # weights and batch-norm statistics alike
        assert torch.equal(value, after[key]), key
    assert all(not p.requires_grad for p in tuned.column1.parameters())
    assert any(a.weight.abs().sum() > 0 for a in tuned.adapters)  # the laterals are in use


def test_progressive_starts_as_a_plain_column_because_adapters_start_at_zero():
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32, progressive=True)).eval()
    plain = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("column1.", "adapters."))})
    images = torch.from_numpy(colour_set(2).images)
    torch.testing.assert_close(model(images), plain(images))


# Zero-shot -----------------------------------------------------------------------------------------

def test_digit_attribute_signatures_are_distinct():
    assert len({tuple(v) for v in DIGITS.values()}) == 10
    assert signatures(list("0123456789"), "")["table"]["8"] == DIGITS["8"]


def test_attribute_table_from_csv_and_its_errors(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("class,striped,four_legs\nzebra,1,1\nfish,0,0\nbird,0,0.5\n")
    names, table = read_table(str(good))
    assert names == ["striped", "four_legs"] and table["bird"] == [0.0, 0.5]
    assert signatures(["zebra", "fish", "bird"], str(good))["names"] == names
    with pytest.raises(TlpipeError, match=r"no row for class\(es\) \['cat'\]"):
        signatures(["zebra", "cat"], str(good))
    bad = tmp_path / "bad.csv"
    bad.write_text("class,striped\nzebra,yes\n")
    with pytest.raises(TlpipeError, match="line 2: values must be numbers"):
        read_table(str(bad))
    same = tmp_path / "same.csv"
    same.write_text("class,striped\nzebra,1\ntiger,1\n")
    with pytest.raises(TlpipeError, match="same attribute signature"):
        signatures(["zebra", "tiger"], str(same))
    with pytest.raises(TlpipeError, match="needs an attribute table"):
        signatures(["zebra", "tiger"], "")


@pytest.fixture(scope="module")
def unseen_ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    names = SPLITS
    out = {n: str(root / n) for n in names}
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPIPE_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    ingest("digits", "digits", 5, 0, 16, out, "zs", "run-1", unseen_classes="7, 8,9")
    mp.undo()
    return {n: load_dataset(out[n]) for n in names}


def test_zero_shot_training_splits_never_hold_an_unseen_class(unseen_ingest):
    unseen = [7, 8, 9]
    source_train, meta = unseen_ingest["source_train"]
    assert meta["unseen"] == ["7", "8", "9"] and meta["attributes"]["table"]["7"] == DIGITS["7"]
    assert not np.isin(source_train.labels, unseen).any()
    assert not np.isin(unseen_ingest["target_labelled"][0].labels, unseen).any()
    # The unlabelled split has no labels: check its images against every unseen-class image.
    test, _ = unseen_ingest["target_test"]
    assert np.isin(test.labels, unseen).any()  # the tests keep them
    unlabelled = {img.tobytes() for img in unseen_ingest["target_unlabelled"][0].images}
    train_images = {img.tobytes() for img in source_train.images}
    held = [img.tobytes() for img in test.images[np.isin(test.labels, unseen)]]
    assert not (set(held) & (unlabelled | train_images))


def test_unseen_classes_are_checked(tmp_path):
    out = {n: str(tmp_path / n) for n in SPLITS}
    with pytest.raises(TlpipeError, match=r"unseen_classes \['x'\] are not classes"):
        ingest("digits", "digits", 5, 0, 16, out, "zs", "run-1", unseen_classes="x")
    with pytest.raises(TlpipeError, match="at least two classes seen"):
        ingest("digits", "digits", 5, 0, 16, out, "zs", "run-1", unseen_classes="0,1,2,3,4,5,6,7,8")


COLOURS = {"r": [1, 0, 0], "g": [0, 1, 0], "b": [0, 0, 1], "rg": [1, 1, 0], "gb": [0, 1, 1], "rb": [1, 0, 1],
           "rgb": [1, 1, 1]}


def colour_mix_set(names: list[str], n_per_class: int, seed: int) -> ImageSet:
    """Classes told apart by which colour channels are bright: the attributes are visible."""
    rng = np.random.default_rng(seed)
    classes = list(COLOURS)
    images, labels = [], []
    for name in names:
        x = rng.integers(0, 60, (n_per_class, 16, 16, 3))
        x = x + 150 * np.array(COLOURS[name])
        images.append(np.clip(x, 0, 255).astype(np.uint8))
        labels += [classes.index(name)] * n_per_class
    return ImageSet(np.concatenate(images), np.array(labels), classes)


@pytest.mark.parametrize("head", ["attributes", "embedding"])
def test_zero_shot_names_unseen_classes_from_their_attributes(head):
    """Trained on r, g, b, rg and gb only, the model recognises rb and rgb, which it never saw."""
    seen, unseen = ["r", "g", "b", "rg", "gb"], ["rb", "rgb"]
    train = colour_mix_set(seen, 12, seed=0)
    test = colour_mix_set(seen + unseen, 10, seed=1)
    torch.manual_seed(0)
    source = Classifier(ModelSpec("small-cnn", list(COLOURS), 16)).train()
    pretrain(source, train, TrainConfig(epochs=4, batch_size=20))
    model = finetune(source, train.subset(np.arange(0)), f"zero-shot:{head}", TrainConfig(epochs=15, batch_size=20),
                     source=train, attributes=COLOURS)
    assert model.spec.head == head and len(model.spec.attributes) == 7
    result = score(model, test, unseen=unseen)
    linear = score(source, test, unseen=unseen)  # the same trunk with an ordinary head: no unseen class
    assert result.seen_accuracy > 0.8, result
    assert result.unseen_among_unseen > 0.8, result  # chance: 1/2
    assert linear.unseen_accuracy == 0.0
