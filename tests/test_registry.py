"""The champion gate: a better model takes `champion`, a worse or equal one only gets `challenger`."""

import mlflow
import numpy as np
import torch

from tlpipe import registry, tracking
from tlpipe.data import ImageSet
from tlpipe.evaluate import score
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, save_model
from tlpipe.train import TrainConfig


def colour_set(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (30, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(30) % 3
    x[np.arange(30), :, :, labels] += 180
    return ImageSet(x, labels, ["r", "g", "b"])


def test_gate_promotes_only_a_strictly_better_model(tlpipe_home, tmp_path):
    test = colour_set(1)
    torch.manual_seed(0)
    weak = Classifier(ModelSpec("small-cnn", test.classes, 16))
    strong = Classifier(ModelSpec("small-cnn", test.classes, 16))
    pretrain(strong, colour_set(0), TrainConfig(epochs=5, batch_size=10))
    save_model(tmp_path / "weak", weak)
    save_model(tmp_path / "strong", strong)
    weak_acc, strong_acc = score(weak, test).accuracy, score(strong, test).accuracy
    assert strong_acc > weak_acc

    client = tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id(client, "gate"))

    def register(name):
        with mlflow.start_run():
            acc = weak_acc if name == "weak" else strong_acc
            return registry.register(client, tmp_path / name, "gated", acc, test, {"tlpipe.test": name})

    first = register("weak")
    assert (first.version, first.promoted, first.previous_champion) == ("1", True, None)
    second = register("strong")
    assert (second.version, second.promoted, second.previous_champion) == ("2", True, "1")
    assert second.previous_champion_accuracy == weak_acc
    third = register("weak")
    assert (third.version, third.promoted, third.champion_version) == ("3", False, "2")

    assert str(client.get_model_version_by_alias("gated", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("gated", "challenger").version) == "3"
    assert client.get_model_version("gated", "3").tags["tlpipe.gate"].startswith("kept champion v2")
