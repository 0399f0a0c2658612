"""The registry: the champion gate, idempotent registration, racing runs, rollback and listing."""

import copy
import json
import multiprocessing
import os
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import torch

from tlpipe import registry, tracking
from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
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


@pytest.fixture
def models(tlpipe_home, tmp_path):
    """A weak (untrained) and a strong model directory, with their accuracies on the test set."""
    test = colour_set(1)
    torch.manual_seed(0)
    torch.manual_seed(0)
    weak = Classifier(ModelSpec("small-cnn", test.classes, 16))
    strong = Classifier(ModelSpec("small-cnn", test.classes, 16))
    pretrain(strong, colour_set(0), TrainConfig(epochs=5, batch_size=10))
    medium = copy.deepcopy(strong)
    with torch.no_grad():
        medium.head.bias[1] = -1e4  # never predicts class "g": right on the other two thirds
    accuracy = {}
    for name, model in (("weak", weak), ("medium", medium), ("strong", strong)):
        save_model(tmp_path / name, model)
        accuracy[name] = score(model, test).accuracy
    assert accuracy["weak"] < accuracy["medium"] < accuracy["strong"], accuracy
    return tmp_path, accuracy, test


def register(models, name, run, model_name="gated", **tags):
    root, accuracy, test = models
    client = tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id(client, "gate"))
    with mlflow.start_run():
        tags = {tracking.PIPELINE_RUN_TAG: run, "tlpipe.accuracy": f"{accuracy[name]:.4f}", **tags}
        return registry.register(client, root / name, model_name, test, tags)


def test_gate_promotes_only_a_model_shown_better(models):
    first = register(models, "weak", "run-1")
    assert (first.version, first.promoted, first.previous_champion) == ("1", True, None)
    assert tracking.configure().get_registered_model("gated").aliases == {"champion": 1}
    second = register(models, "strong", "run-2")
    assert (second.version, second.promoted, second.previous_champion) == ("2", True, "1")
    assert second.previous_champion_accuracy == models[1]["weak"]
    third = register(models, "weak", "run-3")
    assert (third.version, third.promoted, third.champion_version) == ("3", False, "2")

    client = tracking.configure()
    # A promoted version holds champion alone; challenger is the newest version that was not promoted.
    assert client.get_registered_model("gated").aliases == {"champion": 2, "challenger": 3}
    tags = client.get_model_version("gated", "3").tags
    assert tags["tlpipe.gate.verdict"].startswith("kept champion v2: not shown better")
    evidence = json.loads(tags["tlpipe.gate"])  # the evidence in one tag: a version's page shows a dozen, not 25
    assert evidence["p_value"] == third.p_value > 0.05 and evidence["promoted"] is False
    assert evidence["champion_only"] == third.champion_only > 0 and evidence["champion_version"] == "2"
    assert evidence["champion_accuracy"] == pytest.approx(models[1]["strong"], abs=1e-6)
    # What a retried register step of a promoted version reads back.
    assert registry.Registration.load_tags("gated", "2", client.get_model_version("gated", "2").tags) == second
    # A version registered by an earlier tlpipe kept one fact a tag; its evidence still reads.
    old = {f"tlpipe.gate.{k}": str(v) for k, v in {**evidence, "verdict": third.verdict}.items()}
    assert registry.gate_evidence(old)["champion_only"] == str(third.champion_only)
    assert len(tags) <= 12


@pytest.mark.parametrize("b, c, p", [(1, 0, 0.5), (6, 0, 1 / 64), (10, 2, 79 / 4096), (5, 5, 638 / 1024), (0, 0, 1.0),
                                     (0, 3, 1.0)])
def test_mcnemar_p_is_the_exact_one_sided_binomial_tail(b, c, p):
    from scipy.stats import binomtest

    from tlpipe.registry import mcnemar_p

    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)
    if b + c:
        assert mcnemar_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-12)


def test_gate_needs_significance_and_the_margin():
    from tlpipe.registry import PairedComparison

    one_better = PairedComparison(500, 0.802, 0.800, 1, 0, 0.5)
    clearly = PairedComparison(500, 0.86, 0.80, 35, 5, 1e-6)
    assert not registry.Gate().passes(one_better) and registry.Gate().passes(clearly)
    assert not registry.Gate(0.05, margin=10).passes(clearly)  # 6 points < 10
    assert registry.Gate(1.0, margin=0.1).passes(one_better)  # a margin-only team: alpha 1
    assert "gain +6.00 points < margin 10" in registry.Gate(0.05, 10).verdict(clearly, "1")
    with pytest.raises(TlpipeError, match="gate_alpha must be above 0"):
        registry.Gate(0)


def test_a_challenger_one_image_better_is_not_promoted_a_clearly_better_one_is(models):
    root, accuracy, test = models
    register(models, "medium", "run-medium")  # the champion never predicts "g"
    one_green = np.concatenate([np.flatnonzero(test.labels != 1), np.flatnonzero(test.labels == 1)[:1]])
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "gate")):
        close = registry.register(client, root / "strong", "gated", test.subset(one_green),
                                  {tracking.PIPELINE_RUN_TAG: "run-close"})
    assert close.accuracy > close.previous_champion_accuracy  # better by one image...
    assert (close.challenger_only, close.champion_only, close.p_value) == (1, 0, 0.5)
    assert not close.promoted  # ...is no evidence
    clear = register(models, "strong", "run-clear")  # ten green images
    assert clear.challenger_only >= 9 and clear.p_value < 0.01 and clear.promoted
    assert str(client.get_model_version_by_alias("gated", "champion").version) == clear.version


def test_a_champion_whose_splits_had_another_seed_is_not_compared_on_images_it_may_have_trained_on(models):
    """Under another seed, this run's test images may have been in the champion's training split: its
    accuracy on them would be inflated and block better challengers (or, luckier, let worse ones pass)."""
    seed = {registry.SPLIT_SEED_TAG: "0"}
    register(models, "weak", "run-1", **seed)
    other = register(models, "strong", "run-2", **{registry.SPLIT_SEED_TAG: "7"})
    assert (other.version, other.promoted, other.champion_version) == ("2", False, "1")
    assert other.verdict == ("kept champion v1: not compared: its splits were cut with seed 0 and this run's with "
                             "seed 7, so it may have trained on these test images; rerun with -p seed=0 to compare them")
    assert other.p_value is None and other.previous_champion_accuracy is None
    client = tracking.configure()
    assert client.get_registered_model("gated").aliases == {"champion": 1, "challenger": 2}
    assert client.get_model_version("gated", "2").tags["tlpipe.gate.verdict"] == other.verdict
    same = register(models, "strong", "run-3", **seed)  # the same model on splits of the champion's seed
    assert same.promoted and same.p_value < 0.05


def test_a_champion_of_other_classes_is_named_and_left_alone(models, tmp_path):
    register(models, "strong", "run-1")
    other = Classifier(ModelSpec("small-cnn", ["cat", "dog"], 16))
    save_model(tmp_path / "other", other)
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "gate")):
        with pytest.raises(TlpipeError, match=r"the champion of 'gated' \(version 1\) predicts classes \['r', 'g', 'b'\] "
                                              r"and this model \['cat', 'dog'\].*version 2 stays registered as challenger "
                                              r".*another model_name"):
            registry.register(client, tmp_path / "other", "gated", models[2], {tracking.PIPELINE_RUN_TAG: "run-2"})
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("gated", "challenger").version) == "2"
    assert not client.search_registered_models("name = 'gated.gate-lock'")


def test_a_retried_register_step_creates_no_second_version(models):
    first = register(models, "weak", "run-1")
    again = register(models, "weak", "run-1")
    assert again.version == first.version == "1" and again.promoted and again.verdict == first.verdict
    assert len(tracking.configure().search_model_versions("name='gated'")) == 1


def _register_medium(home, root, accuracy, queue):
    os.environ["TLPIPE_HOME"] = home
    client = tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id(client, "gate"))
    with mlflow.start_run():
        tags = {tracking.PIPELINE_RUN_TAG: "run-medium"}
        result = registry.register(client, f"{root}/medium", "gated", colour_set(1), tags)
    queue.put(result.promoted)


@pytest.mark.slow
def test_a_racing_register_waits_for_the_gate_and_never_displaces_a_better_champion(models, tlpipe_home):
    root, accuracy, _ = models
    register(models, "weak", "run-weak")  # the champion both racers beat
    client = tracking.configure()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    racer = context.Process(target=_register_medium, args=(str(tlpipe_home), str(root), accuracy, queue))
    medium_query = f"name='gated' and tags.`{tracking.PIPELINE_RUN_TAG}` = 'run-medium'"
    with registry.gate_lock(client, "gated"):
        racer.start()
        deadline = time.time() + 120
        while not client.search_model_versions(medium_query):
            assert time.time() < deadline and racer.is_alive()
            time.sleep(0.2)
        time.sleep(2)
        assert racer.is_alive()  # its version is registered; it now waits at the gate
        assert str(client.get_model_version_by_alias("gated", "champion").version) == "1"
        # Meanwhile the other racer, holding the gate, promotes the strong model.
        with mlflow.start_run(experiment_id=tracking.experiment_id(client, "gate")):
            strong = registry.log_and_register(root / "strong", "gated", {tracking.PIPELINE_RUN_TAG: "run-strong"})
        client.set_registered_model_alias("gated", "champion", strong)
    racer.join(120)
    assert queue.get(timeout=5) is False  # medium was compared with strong, not with weak
    assert str(client.get_model_version_by_alias("gated", "champion").version) == strong
    assert not [m for m in client.search_registered_models() if m.name.endswith(".gate-lock")]


def test_a_lock_released_while_the_store_reads_it_is_taken_not_an_error(tlpipe_home, monkeypatch):
    # The interleaving a racing step can hit: its insert of the lock fails because the holder has it,
    # and the holder deletes it before the store reads it back to say "already exists".
    client = tracking.configure()
    holder = tracking.configure()
    holder.create_registered_model("gated.gate-lock")
    store = client._get_registry_client().store  # the real SQLite store behind the client
    read = store.get_registered_model
    released = []

    def read_after_the_holder_released(name):
        if name == "gated.gate-lock" and not released:
            released.append(name)
            holder.delete_registered_model(name)
        return read(name)

    monkeypatch.setattr(store, "get_registered_model", read_after_the_holder_released)
    with registry.gate_lock(client, "gated", timeout=30):
        assert released and client.get_registered_model("gated.gate-lock")
    assert not client.search_registered_models("name = 'gated.gate-lock'")


@pytest.mark.slow
def test_rollback_moves_champion_back_and_listing_shows_lineage(models, tlpipe_home):
    register(models, "weak", "run-1")
    register(models, "strong", "run-2")
    env = {**os.environ, "TLPIPE_HOME": str(tlpipe_home)}
    cli = [sys.executable, "-m", "tlpipe.cli"]
    listing = subprocess.run([*cli, "registry", "--model-name", "gated"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[1].split()[:2] == ["2", "champion"] and "run-2" in lines[1]
    assert "evidence" in lines[0] and "vs v1 " in lines[1] and "promoted: better than champion v1" in lines[1]
    assert lines[2].split()[0] == "1" and "run-1" in lines[2]

    moved = subprocess.run([*cli, "rollback", "--model-name", "gated"], env=env, capture_output=True, text=True)
    assert moved.returncode == 0 and "from version 2 to version 1" in moved.stdout
    assert str(tracking.configure().get_model_version_by_alias("gated", "champion").version) == "1"
    with pytest.raises(TlpipeError, match="replaced no earlier champion"):
        registry.rollback(tracking.configure(), "gated")


def test_rollback_names_its_target_and_refuses_a_deleted_one_in_a_sentence(models):
    register(models, "weak", "run-1")
    register(models, "strong", "run-2")  # promoted: replaced v1
    register(models, "weak", "run-3")  # kept as challenger
    client = tracking.configure()
    client.delete_model_version("gated", "1")
    with pytest.raises(TlpipeError, match=r"version 1 of 'gated' \(the champion version 2 replaced\) no longer exists; "
                                          r"the champion stays version 2"):
        registry.rollback(client, "gated")
    for to, why in (("9", "version 9 of 'gated' is not a version"), ("x", "version x of 'gated' is not a version"),
                    ("2", "version 2 of 'gated' is already the champion")):
        with pytest.raises(TlpipeError, match=why):
            registry.rollback(client, "gated", to)
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "2"
    assert registry.rollback(client, "gated", "3") == ("2", "3")
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "3"

def test_a_holder_whose_lease_lapsed_never_deletes_the_new_holders_lock(tlpipe_home):
    client = tracking.configure()
    first = registry.Lease(client, "gated", seconds=30)
    first.acquire(timeout=5)
    client.set_registered_model_tag("gated.gate-lock", "lease_until", str(time.time() - 1))  # it stopped renewing
    second = registry.Lease(client, "gated", seconds=30)
    second.acquire(timeout=5)  # breaks the lapsed lock and takes it
    assert second.owned() and not first.owned()
    assert not first.renew()
    with pytest.raises(TlpipeError, match="lost the registry lock"):
        first.check()
    first.release()
    assert second.owned()
    second.release()
    assert not client.search_registered_models("name = 'gated.gate-lock'")


HOLD = """
import sys, time
from tlpipe import registry, tracking
client = tracking.configure()
with registry.gate_lock(client, "gated", timeout=60) as lease:
    print("enter", time.time(), flush=True)
    time.sleep(float(sys.argv[1]))
    print("owned", lease.owned(), flush=True)
    print("exit", time.time(), flush=True)
"""


@pytest.mark.slow
def test_a_gate_that_works_longer_than_its_lease_keeps_the_lock(tlpipe_home, tmp_path):
    """The first step holds the gate for 4 leases while a second step waits: the second enters only
    after the first left, and the first never deletes the second's lock."""
    env = {**os.environ, "TLPIPE_HOME": str(tlpipe_home), registry.LEASE_ENV: "1.5"}
    tracking.configure()  # create the store before two processes race to
    first = subprocess.Popen([sys.executable, "-c", HOLD, "6"], env=env, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().startswith("enter")
    second = subprocess.Popen([sys.executable, "-c", HOLD, "2"], env=env, stdout=subprocess.PIPE, text=True)
    out_first, _ = first.communicate(timeout=120)
    out_second, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0
    times = lambda out: {line.split()[0]: line.split()[1] for line in out.splitlines()}  # noqa: E731
    a, b = times(out_first), times(out_second)
    assert a["owned"] == "True" and b["owned"] == "True"  # each still held its lock when it finished working
    assert float(b["enter"]) >= float(a["exit"])
    assert not tracking.configure().search_registered_models("name = 'gated.gate-lock'")


class FailingRegistry:
    """A real registry client whose reads of registered models fail the way a server can fail."""

    def __init__(self, client, error_code: str):
        self.client, self.error_code = client, error_code

    def get_registered_model(self, name):
        from mlflow.exceptions import MlflowException

        raise MlflowException(f"the registry answered {self.error_code}", error_code=self.error_code)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.parametrize("error_code", ["TEMPORARILY_UNAVAILABLE", "PERMISSION_DENIED", "INTERNAL_ERROR"])
def test_a_registry_that_cannot_be_read_is_never_taken_for_one_without_a_champion(models, tlpipe_home, error_code):
    register(models, "medium", "run-1")
    client = tracking.configure()
    assert str(registry.champion_version(client, "gated").version) == "1"
    assert registry.champion_version(client, "no-such-model") is None  # never registered: no champion
    failing = FailingRegistry(client, error_code)
    with pytest.raises(TlpipeError, match=f"cannot read the champion of 'gated' from the model registry .*{error_code}"):
        registry.champion_version(failing, "gated")
    # register stops with that sentence: the strong model is registered but moves no alias.
    root, accuracy, test = models
    mlflow.set_experiment(experiment_id=tracking.experiment_id(client, "gate"))
    with mlflow.start_run(), pytest.raises(TlpipeError, match="cannot read the champion"):
        registry.register(failing, root / "strong", "gated", test, {tracking.PIPELINE_RUN_TAG: "run-2"})
    assert str(client.get_model_version_by_alias("gated", "champion").version) == "1"


def test_a_registered_model_without_a_champion_alias_has_no_champion(models, tlpipe_home):
    register(models, "medium", "run-1")
    client = tracking.configure()
    client.delete_registered_model_alias("gated", "champion")
    assert registry.champion_version(client, "gated") is None


class FlakyReads:
    """A real registry client whose reads of the gate lock fail now and then, as a loaded server's do."""

    def __init__(self, client, failures: int):
        self.client, self.failures = client, failures

    def get_registered_model(self, name):
        from mlflow.exceptions import MlflowException

        if name.endswith(".gate-lock") and self.failures > 0:
            self.failures -= 1
            raise MlflowException("the registry timed out", error_code="INTERNAL_ERROR")
        return self.client.get_registered_model(name)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.slow
def test_the_lease_is_renewed_through_failed_reads(tlpipe_home, monkeypatch):
    """A read that fails is not a lost lock: the renewer tries again at the next third of the lease, so the
    lease is still running when the holder finishes, long after the first read failed."""
    monkeypatch.setenv(registry.LEASE_ENV, "3")
    client = tracking.configure()
    flaky = FlakyReads(client, failures=0)
    with registry.gate_lock(flaky, "flaky") as lease:
        flaky.failures = 2  # the renewer's next two reads fail
        time.sleep(7.5)  # two and a half leases: without renewals after the failures, the lease would lapse
        held = client.get_registered_model("flaky.gate-lock")
        assert held.tags["owner"] == lease.owner
        assert float(held.tags["lease_until"]) > time.time()  # renewed after the failures
    assert not client.search_registered_models("name = 'flaky.gate-lock'")


def test_min_accuracy_keeps_a_first_champion_below_it_out_and_says_so(models):
    """The quality floor: an untrained first version is registered as the challenger, with the verdict
    recorded like the gate's, and no champion; a version above the floor then becomes the champion."""
    root, accuracy, test = models
    client = tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id(client, "gate"))
    floor = registry.Gate(min_accuracy=0.9)
    with mlflow.start_run():
        weak = registry.register(client, root / "weak", "floored", test, {tracking.PIPELINE_RUN_TAG: "run-1"}, floor)
    assert not weak.promoted and weak.alias == "challenger" and weak.champion_version == ""
    assert weak.verdict == (f"not promoted: {accuracy['weak']:.2%} on the test split is below min_accuracy 90.00% "
                            "(chance 33.33%)")
    assert registry.champion_version(client, "floored") is None
    tags = client.get_model_version("floored", weak.version).tags
    assert tags["tlpipe.gate.verdict"] == weak.verdict
    assert registry.gate_evidence(tags)["chance_accuracy"] == pytest.approx(1 / 3)
    with mlflow.start_run():
        strong = registry.register(client, root / "strong", "floored", test, {tracking.PIPELINE_RUN_TAG: "run-2"}, floor)
    assert strong.promoted and strong.verdict == "promoted: the first champion" and accuracy["strong"] >= 0.9
    with pytest.raises(TlpipeError, match="min_accuracy is a test accuracy from 0 to 1"):
        registry.Gate(min_accuracy=90)
