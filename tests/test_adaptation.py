"""Alignment methods (DANN, CDAN+E, DAN, Deep CORAL, DANN+fine-tune) and the layer-copy strategies."""

import numpy as np
import pytest
import torch
from helpers import colour_set, trained_source

from tlpipe.errors import TlpipeError
from tlpipe.methods import adapt as adaptation
from tlpipe.methods import domain
from tlpipe.methods.cdan import CdanLoss, MultilinearMap, entropy_weights
from tlpipe.methods.coral import CoralLoss, coral
from tlpipe.methods.dan import DanLoss, mk_mmd
from tlpipe.methods.finetune import finetune
from tlpipe.train import TrainConfig


def gaussian(n, dim=8, shift=0.0, scale=1.0, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(shift, scale, (n, dim))).float()


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    same = mk_mmd(gaussian(200, seed=0), gaussian(200, seed=1))
    shifted = [mk_mmd(gaussian(200, seed=0), gaussian(200, shift=s, seed=1)) for s in (0.5, 1.0, 2.0)]
    # The biased estimate of two samples of one distribution is small but not zero.
    assert same < shifted[0] / 5
    assert shifted[0] < shifted[1] < shifted[2]


def test_coral_sees_a_covariance_difference_that_means_do_not_show():
    a, b = gaussian(500, seed=0), gaussian(500, seed=1)
    assert coral(a, b) < 0.02
    wider = gaussian(500, scale=2.0, seed=1)  # same mean, four times the variance
    assert coral(a, wider) > 10 * coral(a, b)


def test_coral_gradient_pulls_target_statistics_towards_the_source():
    source, target = gaussian(300, seed=0), gaussian(300, scale=3.0, seed=1).requires_grad_()
    before = coral(source, target)
    coral(source, target).backward()
    with torch.no_grad():
        after = coral(source, target - 0.1 * target.grad / target.grad.abs().max())
    assert after < before


def test_cdan_multilinear_map_is_the_outer_product_or_its_random_projection():
    f, g = torch.randn(4, 5), torch.softmax(torch.randn(4, 3), 1)
    exact = MultilinearMap(5, 3)
    assert not exact.randomized
    torch.testing.assert_close(exact(f, g).view(4, 3, 5), g[:, :, None] * f[:, None, :])
    big = MultilinearMap(1000, 10)  # 10,000 > 4,096: randomized
    assert big.randomized and big(torch.randn(4, 1000), torch.softmax(torch.randn(4, 10), 1)).shape == (4, 1024)


def test_entropy_conditioning_weighs_confident_examples_more():
    confident, uncertain = torch.tensor([0.98, 0.01, 0.01]), torch.tensor([0.34, 0.33, 0.33])
    weights = entropy_weights(torch.stack([confident, uncertain]))
    assert weights[0] > weights[1]
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))


def test_cdan_reverses_the_gradient_into_the_features_not_the_predictions():
    loss_fn = CdanLoss(feature_dim=6, classes=3)
    fs, ft = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    ls, lt = torch.randn(8, 3, requires_grad=True), torch.randn(8, 3, requires_grad=True)
    loss, metrics = loss_fn(fs, ft, ls, lt, 1.0)
    loss.backward()
    assert fs.grad.abs().sum() > 0 and ft.grad.abs().sum() > 0
    assert ls.grad is None and lt.grad is None  # predictions condition the discriminator, detached
    assert 0 <= metrics["domain_accuracy"] <= 1


@pytest.mark.parametrize("method", ["dann", "cdan+e", "dan", "coral"])
def test_each_alignment_method_adapts_the_feature_extractor(method):
    source = trained_source()
    target = colour_set(seed=2, shift=80).without_labels()
    adapted = adaptation.adapt(method, source, colour_set(), target, TrainConfig(epochs=2, batch_size=16, backbone_lr=1.0))
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert adapted.spec == source.spec and not adapted.training


@pytest.mark.parametrize("loss, discrepancy", [(CoralLoss, coral), (DanLoss, mk_mmd)])
def test_alignment_loss_leaves_the_domains_closer_than_classification_alone(loss, discrepancy):
    """The same training with the alignment loss at weight 0 and at weight 1: the aligned model's
    features of a colour-shifted target lie closer to the source's (each domain normalised by its
    own batch statistics, as in training)."""
    source_data, target_data = colour_set(), colour_set(seed=2, shift=80)
    source = trained_source()
    gaps = []
    for weight in (0.0, 1.0):
        model = domain.adapt(source, source_data, target_data.without_labels(), lambda m: loss(weight),
                             TrainConfig(backbone_lr=1.0, epochs=8, batch_size=16))
        with torch.no_grad():
            model.train()
            gaps.append(discrepancy(*(model.features(torch.from_numpy(d.images)) for d in (source_data, target_data))))
    assert gaps[1] < gaps[0]


def test_dann_then_finetune_uses_the_target_labels():
    source = trained_source()
    target = colour_set(seed=2, shift=80)
    config = TrainConfig(backbone_lr=1.0, epochs=2, batch_size=16)
    adapted = adaptation.adapt("dann", source, colour_set(), target.without_labels(), config)
    both = adaptation.adapt("dann+finetune", source, colour_set(), target.without_labels(), config,
                            labelled=target, finetune_config=config)
    # Same DANN phase (same seed), then fine-tuning moves the head.
    assert not torch.equal(both.head.weight, adapted.head.weight)
    with pytest.raises(TlpipeError, match="needs labelled target images"):
        adaptation.adapt("dann+finetune", source, colour_set(), target.without_labels(), config)


def test_unknown_adaptation_method_is_one_sentence():
    with pytest.raises(TlpipeError, match="unknown adaptation method 'mmd'; use dann, cdan\\+e, dan, coral, mcc, cdan\\+mcc, "
                                             "fixmatch, adamatch, dann\\+sdat, cdan\\+e\\+sdat, cdan\\+mcc\\+sdat, shot, dann\\+finetune"):
        adaptation.check_method("mmd")


def test_copy_strategies_copy_the_first_k_blocks_and_start_the_rest_fresh():
    source = trained_source()
    target = colour_set(seed=2, shift=80)
    config = TrainConfig(epochs=2, batch_size=16)
    frozen = finetune(source, target, "copy:2", config)
    tuned = finetune(source, target, "copy+:2", config)
    for i in range(2):  # copied: frozen ones unchanged (weights and batch-norm statistics), tuned ones moved
        for (name, a), b in zip(frozen.blocks[i].state_dict().items(), source.blocks[i].state_dict().values()):
            assert torch.equal(a, b), name
        assert not torch.equal(tuned.blocks[i][0].weight, source.blocks[i][0].weight)
    # Not copied: a fresh start, far from the source's weights.
    fresh = frozen.blocks[2][1].weight
    assert not torch.allclose(fresh, source.blocks[2][1].weight, atol=1e-2)
    with pytest.raises(TlpipeError, match="more blocks than the backbone has"):
        finetune(source, target, "copy:5", config)


def test_copy_zero_blocks_is_target_only():
    source, target = trained_source(), colour_set(seed=2, shift=80)
    config = TrainConfig(epochs=2, batch_size=16)
    a, b = finetune(source, target, "copy:0", config), finetune(source, target, "scratch", config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_dann_then_finetune_fine_tunes_with_the_target_augmentation_not_none(monkeypatch):
    """dann+finetune's fine-tuning phase trains on the labelled target images as the finetune step does:
    with the target's augmentation (before, it was forced to none)."""
    seen = {}

    def spy(model, labelled, strategy, config, log=None):
        seen["augment"], seen["epochs"] = config.augment, config.epochs
        return model

    monkeypatch.setattr(adaptation, "finetune", spy)
    source = trained_source()
    config = TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16, augment="colour")
    tune = TrainConfig(epochs=2, batch_size=16, augment="photo")
    adaptation.adapt("dann+finetune", source, colour_set(), colour_set(seed=1, shift=40), config,
                     labelled=colour_set(4, seed=2), finetune_config=tune)
    assert seen == {"augment": "photo", "epochs": 2}


def test_adaptation_takes_the_pretrained_recipe_with_pretrained_weights_unless_told_otherwise():
    auto = TrainConfig(bottleneck=adaptation.AUTO, backbone_lr=adaptation.AUTO)
    assert (adaptation.recipe(auto, pretrained=True).bottleneck, adaptation.recipe(auto, pretrained=True).backbone_lr) == (256, 0.1)
    assert (adaptation.recipe(auto, pretrained=False).bottleneck, adaptation.recipe(auto, pretrained=False).backbone_lr) == (0, 1.0)
    given = TrainConfig(bottleneck=32, backbone_lr=adaptation.AUTO)
    assert (adaptation.recipe(given, pretrained=True).bottleneck, adaptation.recipe(given, pretrained=True).backbone_lr) == (32, 0.1)
