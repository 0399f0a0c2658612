"""Model selection: by target validation accuracy, never by the test split; label-free criteria."""

import copy

import numpy as np
import pytest
import torch

from tlpipe import selection
from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import compare
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.report import format_table
from tlpipe.train import TrainConfig


def colour_images(counts, seed):
    """counts[c] images of colour class c (r, g, b)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), counts)
    x = rng.integers(0, 60, (len(labels), 16, 16, 3)).astype(np.uint8)
    x[np.arange(len(labels)), :, :, labels] += 180
    return ImageSet(x, labels, ["r", "g", "b"])


@pytest.fixture(scope="module")
def blind_models():
    """Two copies of one good model: one never predicts "g", the other never predicts "b"."""
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 16))
    pretrain(model, colour_images([20, 20, 20], 0), TrainConfig(epochs=5, batch_size=10))
    no_green, no_blue = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        no_green.head.bias[1] = -1e4
        no_blue.head.bias[2] = -1e4
    return {"no-green": (no_green, "candidate"), "no-blue": (no_blue, "candidate")}


def test_evaluate_selects_by_validation_even_when_test_disagrees(blind_models):
    val = colour_images([10, 10, 2], 1)  # mostly red and green: no-blue is better here
    test = colour_images([10, 2, 10], 2)  # mostly red and blue: no-green is better here
    evaluation = compare(blind_models, test, val=val)
    accuracy = {r.name: r.accuracy for r in evaluation.results}
    assert accuracy["no-green"] > accuracy["no-blue"]  # the test split would have chosen no-green
    assert evaluation.best == "no-blue" and evaluation.selected_by == "target-val"
    assert evaluation.result("no-blue").val_accuracy > evaluation.result("no-green").val_accuracy
    table = format_table(evaluation)
    assert "val acc" in table.splitlines()[0] and "test acc" in table.splitlines()[0]
    assert "selected by target validation accuracy (22 images)" in table
    assert "<- selected" in next(line for line in table.splitlines() if line.startswith("no-blue"))


def test_without_validation_labels_a_label_free_criterion_selects(blind_models):
    test = colour_images([10, 2, 10], 2)
    unlabelled = colour_images([10, 10, 2], 3).without_labels()
    evaluation = compare(blind_models, test, target_unlabelled=unlabelled)  # auto: no val -> IM
    assert evaluation.selected_by == "im"
    assert "selected by information maximisation on unlabelled target images" in format_table(evaluation)
    # no-green predicts the green images as something else: less balanced on mostly r/g images.
    assert evaluation.best == "no-blue"
    snd = compare(blind_models, test, target_unlabelled=unlabelled, select_by="snd")
    assert snd.selected_by == "snd" and all(r.selection_score is not None for r in snd.results)
    source = compare(blind_models, test, source_val=colour_images([5, 1, 5], 4), select_by="source-val")
    assert source.best == "no-green"


def test_information_maximisation_by_hand():
    confident_balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    unsure = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert selection.information_maximisation(confident_balanced) == pytest.approx(1.0, abs=1e-6)
    assert selection.information_maximisation(unsure) == pytest.approx(0.0, abs=1e-6)
    assert selection.information_maximisation(collapsed) == pytest.approx(0.0, abs=1e-6)


def test_soft_neighbourhood_density_by_hand():
    # Two tight clusters of five: each image's neighbours are its four cluster mates, equally similar,
    # so its neighbour distribution is uniform over four: entropy log 4.
    clusters = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    assert selection.soft_neighbourhood_density(clusters) == pytest.approx(np.log(4), abs=1e-6)


def test_select_by_is_checked():
    with pytest.raises(TlpipeError, match="unknown select_by 'test'"):
        selection.resolve("test", 10)
    with pytest.raises(TlpipeError, match="select_by=target-val needs target validation images"):
        selection.resolve("target-val", 0)
    assert selection.resolve("auto", 0) == "im" and selection.resolve("auto", 5) == "target-val"


def test_the_table_says_what_chance_is_and_warns_when_no_model_learned_the_task(blind_models, tmp_path):
    """What a 3-class folder whose models all answered "triangle" gave: every model at chance, tied, and the
    first one promoted with no word of it."""
    from tlpipe.report import write_report

    torch.manual_seed(0)
    stuck = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 16))
    with torch.no_grad():
        stuck.head.bias[:] = torch.tensor([0.0, 1e4, 0.0])  # answers "g" whatever the image
    test = colour_images([12, 6, 6], 2)
    evaluation = compare({"a": (stuck, "candidate"), "b": (copy.deepcopy(stuck), "candidate")}, test,
                         val=colour_images([4, 4, 4], 4))
    assert evaluation.chance == pytest.approx(0.5)  # always "r", the most frequent test class
    assert evaluation.warnings == [
        "every model scored the same 25.00% on the target test split with the same confusion matrix; they may all "
        "answer the same way whatever the image (train longer, check the data and lr)",
        "a answers 'g' for 100% of the target test images", "b answers 'g' for 100% of the target test images",
        "the selected model a scores 25.00%, no better than chance (50.00%: always answering the most frequent test class)"]
    table = format_table(evaluation)
    assert "chance 50.00% (always the most frequent test class)" in table
    assert "warning: a answers 'g' for 100% of the target test images" in table
    write_report(tmp_path / "report.html", evaluation, "t", {})
    page = (tmp_path / "report.html").read_text()
    assert "Chance is 50.00%" in page and '<p class="warning"><b>Warning:</b> every model scored the same' in page
    learned = compare(blind_models, colour_images([10, 10, 10], 3), val=colour_images([4, 4, 4], 4))
    assert learned.result("no-green").accuracy == learned.result("no-blue").accuracy  # tied, but not alike
    assert learned.warnings == [] and learned.chance == pytest.approx(1 / 3)
