
import numpy as np
import pytest
import torch
from helpers import colour_set, trained_source

from tlpipe.data import ImageSet
from tlpipe.errors import TlpipeError
from tlpipe.methods import dann, domain
from tlpipe.methods.finetune import finetune, l2sp_penalty, parse_strategy
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec
from tlpipe.scoring import predict
from tlpipe.train import TrainConfig, annealed_lr


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


def test_full_finetuning_trains_the_transferred_backbone_at_the_configured_fraction_of_the_rate():
    source = trained_source()
    held = finetune(source, colour_set(seed=1, shift=40), "full", TrainConfig(epochs=1, batch_size=8, backbone_lr=0.0))
    moved = finetune(source, colour_set(seed=1, shift=40), "full", TrainConfig(epochs=1, batch_size=8, backbone_lr=0.1))
    weights = dict(source.blocks.named_parameters())
    assert all(torch.equal(weights[k], p) for k, p in held.blocks.named_parameters())
    assert not all(torch.equal(weights[k], p) for k, p in moved.blocks.named_parameters())
    assert not torch.equal(source.state_dict()["head.weight"], held.state_dict()["head.weight"])


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
    adapted = dann.adapt(source, colour_set(), target, TrainConfig(epochs=2, batch_size=16, backbone_lr=1.0))
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert adapted.spec == source.spec


def test_dann_refuses_an_empty_target():
    empty = ImageSet(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), ["r", "g", "b"])
    with pytest.raises(TlpipeError, match="unlabelled target split is empty"):
        dann.adapt(trained_source(), colour_set(), empty, TrainConfig(epochs=1))


def test_mcc_loss_is_the_papers_class_confusion_on_a_hand_built_batch():
    from tlpipe.methods.mcc import class_confusion

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.1], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    # The paper's definition, one term at a time: Y = softmax(z / T), W_i = B (1 + e^-H_i) / sum_j (1 + e^-H_j),
    # C_jk = sum_i W_i Y_ij Y_ik, each row normalised to sum 1, the off-diagonal mass over the classes.
    T, (B, K) = 2.5, logits.shape
    Y = [[np.exp(z / T) / sum(np.exp(v / T) for v in row) for z in row] for row in logits.tolist()]
    H = [-sum(y * np.log(y) for y in row) for row in Y]
    W = [B * (1 + np.exp(-h)) / sum(1 + np.exp(-g) for g in H) for h in H]
    C = [[sum(W[i] * Y[i][j] * Y[i][k] for i in range(B)) for k in range(K)] for j in range(K)]
    expected = sum(C[j][k] / sum(C[j]) for j in range(K) for k in range(K) if k != j) / K
    assert class_confusion(logits).item() == pytest.approx(expected, abs=1e-4)
    # Confident, distinct predictions confuse nothing; uniform ones confuse the most: (K - 1) / K.
    assert class_confusion(torch.eye(3) * 200).item() == pytest.approx(0.0, abs=1e-6)
    assert class_confusion(torch.zeros(5, 3)).item() == pytest.approx(2 / 3, abs=1e-6)


def test_sdat_steps_with_the_gradient_taken_at_the_ascent_point_of_the_task_loss():
    from tlpipe.methods.sdat import SharpnessAware

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    x, y, rho, lr = torch.tensor([3.0, 1.0]), 4.0, 0.5, 0.1
    sam = SharpnessAware(torch.optim.SGD([w], lr=lr), [w], rho)
    task = lambda v: (v @ x - y) ** 2  # noqa: E731
    # By hand: g = 2 (w.x - y) x = 2 (1 - 4) (3, 1) = (-18, -6); e = rho g / |g|; w' = w - lr * grad at w + e.
    g = np.array([-18.0, -6.0])
    e = rho * g / np.linalg.norm(g)
    ascent = np.array([1.0, -2.0]) + e
    grad_there = 2 * (ascent @ np.array([3.0, 1.0]) - y) * np.array([3.0, 1.0]) + ascent  # task + 0.5 |w|^2
    sam.perturb(task(w))
    np.testing.assert_allclose(w.detach().numpy(), ascent, rtol=1e-6)
    sam.zero_grad()
    (task(w) + 0.5 * (w**2).sum()).backward()  # the whole loss, at the ascent point
    sam.step()
    np.testing.assert_allclose(w.detach().numpy(), np.array([1.0, -2.0]) - lr * grad_there, rtol=1e-6)


def test_adaptation_trains_the_backbone_at_its_fraction_of_the_rate():
    from tlpipe.methods.dann import DannLoss
    from tlpipe.train import sgd

    model = Classifier(ModelSpec("timm:resnet18", ["r", "g", "b"], 32, bottleneck=16))
    alignment = DannLoss(model.feature_dim)
    config = TrainConfig(lr=0.02, backbone_lr=0.1)
    groups = sgd(domain.parameter_groups(model, alignment, config), config).param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(0.002), 0.02, 0.02]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.trunk.parameters()}
    rest = {id(p) for p in [*model.bottleneck.parameters(), *model.head.parameters()]}
    assert {id(p) for p in groups[1]["params"]} == rest
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in alignment.parameters()}


def test_a_bottleneck_goes_between_the_source_backbone_and_a_new_head():
    source = trained_source()
    adapted = dann.adapt(source, colour_set(), colour_set(seed=2, shift=80).without_labels(),
                         TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16, bottleneck=24, lr=0.0))
    assert adapted.spec.bottleneck == 24 and adapted.head.in_features == 24 and adapted.feature_dim == 24
    # lr 0: the copied backbone is the source's (the new layers are what changed)
    for a, b in zip(source.blocks.parameters(), adapted.blocks.parameters()):
        torch.testing.assert_close(a, b)
    assert adapted.features(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 24)
    # Fine-tuning an adapted model (dann+finetune) trains its bottleneck with the head.
    tuned = finetune(adapted, colour_set(seed=1), "full", TrainConfig(epochs=1, batch_size=16))
    assert not torch.equal(tuned.bottleneck[0].weight, adapted.bottleneck[0].weight)


@pytest.mark.parametrize("method", ["mcc", "cdan+mcc", "dann+sdat", "cdan+mcc+sdat"])
def test_new_adaptation_methods_train_and_keep_the_spec(method):
    from tlpipe.methods import adapt as adaptation

    source = trained_source()
    adapted = adaptation.adapt(method, source, colour_set(), colour_set(seed=2, shift=80).without_labels(),
                               TrainConfig(backbone_lr=1.0, epochs=1, batch_size=16))
    assert not torch.equal(adapted.blocks[0][0].weight, source.blocks[0][0].weight)
    assert adapted.spec == source.spec


def test_target_only_starts_from_the_pretrained_weights_with_a_new_head():
    torch.manual_seed(5)
    pretrained = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32))
    weights = {f"blocks.{k}": v for k, v in pretrained.blocks.state_dict().items()}
    source = Classifier(ModelSpec("small-cnn", ["r", "g", "b"], 32), weights, "test-made")
    pretrain(source, colour_set(), TrainConfig(epochs=1, batch_size=16))
    still = TrainConfig(epochs=1, batch_size=16, lr=0.0)  # lr 0: the starting weights stay visible
    target_only = finetune(source, colour_set(seed=1), "scratch", still, initial_weights=weights, initial_source="test-made")
    for a, b in zip(pretrained.blocks.parameters(), target_only.blocks.parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(target_only.head.weight, source.head.weight)
    from_random = finetune(source, colour_set(seed=1), "scratch", still)
    assert not torch.equal(from_random.blocks[0][0].weight, pretrained.blocks[0][0].weight)
