
import numpy as np
import pytest
import torch

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.methods import dann, domain
from tlpipe.methods.finetune import finetune, l2sp_penalty, parse_strategy
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, predict
from tlpipe.train import TrainConfig, annealed_lr


def colour_set(n_per_class=16, seed=0, shift=0):
    """Three classes told apart by which colour channel is bright; `shift` brightens everything."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        x = rng.integers(0, 60, (n_per_class, 32, 32, 3)).astype(np.int64) + shift
        x[..., label] += 150
        images.append(np.clip(x, 0, 255).astype(np.uint8))
        labels += [label] * n_per_class
    return ImageSet(np.concatenate(images), np.array(labels), ["r", "g", "b"])


def trained_source():
    torch.manual_seed(0)
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32))
    pretrain(model, colour_set(), TrainConfig(epochs=3, batch_size=16))
    return model


def test_gradient_reversal_negates_and_scales_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (dann.reverse_gradient(x, 0.3) * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)
    y = torch.randn(4, 3)
    assert torch.equal(dann.reverse_gradient(y, 0.3), y)


def test_schedules_follow_ganin():
    assert domain.ganin_lambda(0.0) == 0.0
    assert 0.99 < domain.ganin_lambda(1.0) < 1.0
    assert domain.ganin_lambda(0.1) < domain.ganin_lambda(0.5)
    assert annealed_lr(0.0) == 1.0
    assert annealed_lr(1.0) == pytest.approx(1 / 11**0.75)


def test_l2sp_penalty_is_zero_at_source_and_grows_quadratically():
    model = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32))
    source = {k: v.detach().clone() for k, v in model.blocks.named_parameters()}
    penalty = l2sp_penalty(model, source, alpha=0.5)
    assert penalty().item() == 0.0
    with torch.no_grad():
        model.blocks[0][0].weight.add_(0.1)
    small = penalty().item()
    with torch.no_grad():
        model.blocks[0][0].weight.add_(0.1)
    n = model.blocks[0][0].weight.numel()
    assert small == pytest.approx(0.5 * 0.5 * n * 0.01, rel=1e-3)
    assert penalty().item() == pytest.approx(4 * small, rel=1e-3)


def test_freeze_k_leaves_the_first_k_blocks_bit_identical():
    source = trained_source()
    tuned = finetune(source, colour_set(seed=1, shift=40), "freeze:2", TrainConfig(epochs=2, batch_size=8))
    before, after = source.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(("blocks.0.", "blocks.1."))]
    assert any("running_mean" in k for k in frozen)  # batch-norm statistics are frozen too
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["blocks.2.1.weight"], after["blocks.2.1.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_linear_probe_trains_only_the_head():
    source = trained_source()
    tuned = finetune(source, colour_set(seed=1, shift=40), "linear-probe", TrainConfig(epochs=2, batch_size=8))
    before, after = source.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks."))
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_l2sp_stays_closer_to_the_source_than_full_finetuning():
    source = trained_source()
    target = colour_set(seed=1, shift=60)
    config = TrainConfig(epochs=3, batch_size=8, lr=0.05)

    def distance(model):
        return sum(((a - b) ** 2).sum() for a, b in zip(model.blocks.parameters(), source.blocks.parameters())).item()

    assert distance(finetune(source, target, "l2sp:10", config)) < distance(finetune(source, target, "full", config))


@pytest.mark.parametrize("bad", ["freeze:x", "l2sp", "l2sp:-1", "partial", "full:1"])
def test_unknown_strategies_are_user_errors(bad):
    with pytest.raises(TlpipeError, match="unknown fine-tuning strategy"):
        parse_strategy(bad)


def test_freezing_more_blocks_than_exist_is_a_user_error():
    with pytest.raises(TlpipeError, match="more blocks than the backbone has"):
        finetune(trained_source(), colour_set(), "freeze:9", TrainConfig(epochs=1))


def test_supervised_training_learns_and_is_deterministic():
    data = colour_set()
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Classifier(ModelSpec("small-cnn", data.classes, 32))
        pretrain(model, data, TrainConfig(epochs=3, batch_size=16, seed=5))
        models.append(model)
    assert (predict(models[0], data.images).numpy() == data.labels).mean() > 0.9
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))


def test_dann_trains_the_discriminator_through_reversed_features():
    source = trained_source()
    target = colour_set(seed=2, shift=80).without_labels()
    adapted = dann.adapt(source, colour_set(), target, TrainConfig(epochs=2, batch_size=16))
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert adapted.spec == source.spec


def test_dann_refuses_an_empty_target():
    empty = ImageSet(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), ["r", "g", "b"])
    with pytest.raises(TlpipeError, match="unlabelled target split is empty"):
        dann.adapt(trained_source(), colour_set(), empty, TrainConfig(epochs=1))
