"""Self-training (FixMatch, AdaMatch) against the papers' definitions on hand-made logits, and batch
norm in adaptation: one joint pass, whose statistics evaluation uses; extra partial passes (SDAT's
ascent point, AdaMatch's source-only logits) leave the running statistics alone."""

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import colour_set, trained_source

from tlpipe.methods import adamatch, domain, fixmatch
from tlpipe.methods import adapt as adaptation
from tlpipe.methods.dann import DannLoss
from tlpipe.models import Classifier, ModelSpec
from tlpipe.train import TrainConfig


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def cross_entropy(row, label):
    return -math.log(softmax(row)[label])


def test_fixmatch_loss_is_the_papers_thresholded_consistency_on_hand_made_logits():
    weak = torch.tensor([[6.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 8.0], [2.9, 0.0, 0.0]])
    strong = torch.tensor([[0.5, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    # max softmax: image 0 ~0.995, image 1 ~0.49, image 2 ~0.9993, image 3 ~0.90: only 0 and 2 clear 0.95.
    assert [max(softmax(r)) >= 0.95 for r in weak.tolist()] == [True, False, True, False]
    expected = (cross_entropy(strong[0].tolist(), 0) + cross_entropy(strong[2].tolist(), 2)) / 4  # mean over all
    loss, mask = fixmatch.consistency(weak, strong)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert mask.tolist() == [True, False, True, False]
    assert fixmatch.consistency(weak, strong, threshold=0.85)[1].tolist() == [True, False, True, True]
    # The pseudo-labels carry no gradient: only the strong view's logits are trained.
    weak.requires_grad_(True)
    strong.requires_grad_(True)
    fixmatch.consistency(weak, strong)[0].backward()
    assert weak.grad is None and strong.grad.abs().sum() > 0


def test_adamatch_aligns_target_predictions_to_the_source_distribution_and_thresholds_relative_to_source_confidence():
    source_logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    target_logits = torch.tensor([[0.2, 0.0], [1.5, 0.0], [0.0, 0.4]])
    strong = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.3, 0.0]])
    ps = [softmax(r) for r in source_logits.tolist()]
    pt = [softmax(r) for r in target_logits.tolist()]
    # By hand: ratio_c = E[ps]_c / E[pt]_c; aligned = pt * ratio, renormalised per image.
    ratio = [np.mean([p[c] for p in ps]) / np.mean([p[c] for p in pt]) for c in range(2)]
    scaled = [[p[c] * ratio[c] for c in range(2)] for p in pt]
    by_hand = [[v / sum(row) for v in row] for row in scaled]
    got = adamatch.aligned(torch.tensor(pt), torch.tensor(ps))
    np.testing.assert_allclose(got.numpy(), by_hand, rtol=1e-5)
    threshold = 0.9 * np.mean([max(p) for p in ps])
    kept = [max(row) >= threshold for row in by_hand]
    assert kept != [True] * 3 and any(kept)  # the case is one where the threshold decides
    loss, mask, used = adamatch.target_loss(source_logits, target_logits, strong)
    assert used.item() == pytest.approx(threshold, rel=1e-6)
    assert mask.tolist() == kept
    labels = [int(np.argmax(row)) for row in by_hand]
    expected = sum(cross_entropy(strong[i].tolist(), labels[i]) for i in range(3) if kept[i]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_adamatch_interpolates_logits_element_wise_and_ramps_the_target_weight_over_half_of_training():
    joint, alone = torch.zeros(50, 4), torch.ones(50, 4)
    torch.manual_seed(0)
    mixed = adamatch.interpolate(joint, alone)
    torch.manual_seed(0)
    weights = torch.rand(50, 4)
    torch.testing.assert_close(mixed, weights * joint + (1 - weights) * alone)
    assert len(set(mixed.flatten().tolist())) == 200  # a draw per element, not per image
    assert adamatch.target_weight(0.0) == 0.0
    assert adamatch.target_weight(0.25) == pytest.approx(0.5)
    assert adamatch.target_weight(0.5) == adamatch.target_weight(0.9) == 1.0


def two_domains(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(0, 100, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    target = torch.randint(150, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    return source, target


def first_norm(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def batch_mean_at_first_norm(model, images):
    """The per-channel mean that the first batch-norm layer sees for `images`."""
    seen = {}
    hook = first_norm(model).register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    with torch.no_grad(), domain.untracked_batch_norm(model):
        model(images)
    hook.remove()
    return seen["x"].mean((0, 2, 3))


def test_alignment_normalises_each_domain_by_its_own_statistics_and_ends_with_the_targets():
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["a", "b", "c"], 32)).train()
    source, target = two_domains()
    joint = domain._Joint(model, DannLoss(model.feature_dim)).train()
    source_logits, _, _ = joint(source, target, 0.5)
    torch.testing.assert_close(source_logits, model(source))  # the source batch alone, not mixed with the target
    # After adaptation, the running statistics are the target images' (evaluation normalises target
    # images as their training batches were), not the mixture of both domains that training passed.
    target_set = colour_set(seed=2, shift=80)
    adapted = adaptation.adapt("dann", trained_source(), colour_set(), target_set.without_labels(),
                               TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16))
    expected = batch_mean_at_first_norm(adapted, torch.from_numpy(target_set.images))
    torch.testing.assert_close(first_norm(adapted).running_mean, expected, rtol=1e-4, atol=1e-4)
    assert not adapted.training
    mixed = batch_mean_at_first_norm(adapted, torch.from_numpy(np.concatenate([colour_set().images, target_set.images])))
    assert not torch.allclose(first_norm(adapted).running_mean, mixed, atol=1e-2)


def test_target_statistics_change_batch_norm_and_nothing_else():
    model = trained_source().train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    domain.target_statistics(model, colour_set(seed=2, shift=80).images)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])}
    assert changed and all("running" in k or "num_batches" in k for k in changed), changed
    assert model.training and first_norm(model).momentum == 0.1  # modes and momentum as they were


def test_extra_passes_leave_the_running_statistics_alone():
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["a", "b", "c"], 32)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    source, target = two_domains()
    before = first_norm(model).running_mean.clone()
    with domain.untracked_batch_norm(model):
        out = model(source)
    torch.testing.assert_close(first_norm(model).running_mean, before)
    assert first_norm(model).track_running_stats  # restored
    # ...and still normalise by the batch's own statistics (train mode), as the pass they stand beside.
    torch.testing.assert_close(out, model(source))
    # AdaMatch: its source-only pass does not count; the running statistics are the joint batch's.
    objective = adamatch.AdaMatch(model).train()
    weak_source, strong_source = source, source.flip(1)
    objective([weak_source, strong_source], torch.zeros(16, dtype=torch.int64), target, target.flip(2), 0.3)
    expected = batch_mean_at_first_norm(model, torch.cat([weak_source, strong_source, target, target.flip(2)]))
    torch.testing.assert_close(first_norm(model).running_mean, expected, rtol=1e-4, atol=1e-4)


def test_sdat_ascent_pass_leaves_the_running_statistics_as_the_joint_pass_left_them(monkeypatch):
    unchanged = []
    original = domain.untracked_batch_norm

    @contextlib.contextmanager
    def watching(model):
        before = first_norm(model).running_mean.clone()
        with original(model):
            yield
        unchanged.append(torch.equal(before, first_norm(model).running_mean))

    monkeypatch.setattr(domain, "untracked_batch_norm", watching)
    adaptation.adapt("dann+sdat", trained_source(), colour_set(), colour_set(seed=2, shift=80).without_labels(),
                     TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16))
    assert unchanged == [True] * (len(colour_set()) // 16)  # every step's ascent pass


class Stop(Exception):
    pass


def stop_in_epoch(n):
    def log(epoch, metrics, model=None):
        if epoch == n:
            raise Stop

    return log


@pytest.mark.parametrize("method", ["fixmatch", "adamatch"])
def test_self_training_methods_train_keep_the_spec_and_resume_identically(method, tmp_path, capsys):
    source, target, labelled = trained_source(), colour_set(seed=2, shift=80).without_labels(), None
    if method == "adamatch":
        labelled = colour_set(n_per_class=2, seed=3, shift=80)
    config = TrainConfig(backbone_lr=1.0, epochs=3, batch_size=16)
    adapted = adaptation.adapt(method, source, colour_set(), target, config, labelled=labelled)
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert adapted.spec == source.spec
    # A step stopped in its second epoch (its checkpoint: after the first) and started again resumes
    # there and trains to the same weights: the views' draws, the loaders and the RNGs are restored.
    checkpointed = dataclasses.replace(config, checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(Stop):
        adaptation.adapt(method, source, colour_set(), target, checkpointed, log=stop_in_epoch(1), labelled=labelled)
    resumed = adaptation.adapt(method, source, colour_set(), target, checkpointed, labelled=labelled)
    assert "resuming from the checkpoint after epoch 1/3" in capsys.readouterr().out
    for a, b in zip(adapted.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adamatch_learns_from_labelled_target_images_where_there_are_any(monkeypatch):
    seen = []
    original = adamatch.AdaMatch.forward

    def watching(self, source_views, labels, *rest):
        seen.append(len(labels))
        return original(self, source_views, labels, *rest)

    monkeypatch.setattr(adamatch.AdaMatch, "forward", watching)
    labelled = colour_set(n_per_class=2, seed=3, shift=80)  # 6 images
    config = TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16)
    adaptation.adapt("adamatch", trained_source(), colour_set(), colour_set(seed=2).without_labels(), config,
                     labelled=labelled)
    assert set(seen) == {16 + 6}  # each step: a source batch and the labelled target images
    seen.clear()
    adaptation.adapt("adamatch", trained_source(), colour_set(), colour_set(seed=2).without_labels(), config)
    assert set(seen) == {16}


def test_pseudo_labels_are_watched_on_target_validation_labels_when_a_method_pseudo_labels(capsys):
    from tlpipe.scoring import probabilities
    from tlpipe.tracking.progress import EpochLogger, pseudo_label_quality

    model, val = trained_source(), colour_set(seed=4, shift=40)
    confidence, predicted = probabilities(model, val.images).max(1)
    threshold = float(confidence.median())
    kept = confidence >= threshold
    quality = pseudo_label_quality(model.train(), val, threshold)
    assert model.training  # its modes are left as they were
    assert quality["val_pseudo_label_share"] == pytest.approx(float(kept.float().mean()))
    assert quality["val_pseudo_label_accuracy"] == pytest.approx(float((predicted[kept].numpy() == val.labels[kept.numpy()]).mean()))
    logger = EpochLogger("adapt", 1, val)
    logger(0, {"loss": 0.5, "pseudo_label_threshold": threshold}, model)
    assert "val_pseudo_label_accuracy" in capsys.readouterr().out
    logger(0, {"loss": 0.5}, model)  # a method that does not pseudo-label
    assert "pseudo_label" not in capsys.readouterr().out


def test_shot_information_maximisation_is_mean_entropy_minus_the_entropy_of_the_mean():
    from tlpipe.methods.shot import information_maximisation

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 3.0, 0.5]])
    p = [softmax(r) for r in logits.tolist()]
    entropy = np.mean([-sum(v * math.log(v) for v in row) for row in p])
    mean = [np.mean([row[k] for row in p]) for k in range(3)]
    assert information_maximisation(logits).item() == pytest.approx(entropy + sum(m * math.log(m) for m in mean), abs=1e-4)
    # Confident and spread over the classes is the minimum, -log K; all on one class is not.
    assert information_maximisation(torch.eye(3) * 50).item() == pytest.approx(-math.log(3), abs=1e-3)
    assert information_maximisation(torch.tensor([[50.0, 0, 0]] * 3)).item() == pytest.approx(0.0, abs=1e-3)


def test_shot_labels_each_image_by_its_nearest_class_centroid_not_by_its_prediction():
    from tlpipe.methods.shot import centroid_labels

    # Two clusters of features along two directions; the classifier's probabilities get one image of
    # each cluster wrong, and the centroids put them right.
    g = torch.Generator().manual_seed(0)
    features = torch.cat([torch.tensor([5.0, 0.0]) + 0.3 * torch.randn(10, 2, generator=g),
                          torch.tensor([0.0, 5.0]) + 0.3 * torch.randn(10, 2, generator=g)])
    probabilities = torch.tensor([[0.8, 0.2]] * 10 + [[0.2, 0.8]] * 10)
    probabilities[3], probabilities[15] = torch.tensor([0.3, 0.7]), torch.tensor([0.6, 0.4])
    assert centroid_labels(features, probabilities).tolist() == [0] * 10 + [1] * 10


def test_shot_adapts_the_feature_extractor_under_the_frozen_source_head_from_target_images_alone(tmp_path, capsys):
    source, target = trained_source(), colour_set(seed=2, shift=80).without_labels()
    config = TrainConfig(backbone_lr=1.0, epochs=3, batch_size=16)
    adapted = adaptation.adapt("shot", source, None, target, config)
    assert torch.equal(adapted.head.weight, source.head.weight)  # the source hypothesis, bit for bit
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert all(p.requires_grad for p in adapted.parameters())  # a model to fine-tune later, as any other
    checkpointed = dataclasses.replace(config, checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(Stop):
        adaptation.adapt("shot", source, None, target, checkpointed, log=stop_in_epoch(1))
    resumed = adaptation.adapt("shot", source, None, target, checkpointed)
    assert "resuming from the checkpoint after epoch 1/3" in capsys.readouterr().out
    for a, b in zip(adapted.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
