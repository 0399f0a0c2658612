"""timm backbones: each family builds headless (pretrained=False), splits into timm's layer groups,
freezes and copies the first k, saves and loads, and takes weights in timm's key names."""

import copy

import numpy as np
import pytest
import timm
import torch
from helpers import colour_set
from safetensors.torch import save_file

from tlpipe.errors import TlpipeError
from tlpipe.methods.finetune import finetune, freeze_blocks
from tlpipe.methods.supervised import pretrain
from tlpipe.models import Classifier, ModelSpec, load_model, read_weights, save_model
from tlpipe.train import TrainConfig

# One small model of each family users fine-tune, and the blocks timm's coarse groups give it:
# stem + stages (ResNet, ConvNeXt + its final norm), stem + transformer blocks, stem + stages.
FAMILIES = {"resnet18": 5, "convnext_atto": 6, "vit_tiny_patch16_224": 13, "efficientnet_b0": 8}


def spec(name, size=32):
    return ModelSpec(backbone=f"timm:{name}", classes=["r", "g", "b"], input_size=size)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_timm_family_builds_splits_and_covers_every_weight(name):
    model = Classifier(spec(name))
    reference = timm.create_model(name, num_classes=0)
    assert len(model.blocks) == FAMILIES[name]
    # The blocks hold every weight of the trunk, each once.
    in_blocks = [id(p) for p in model.blocks.parameters()]
    assert sorted(in_blocks) == sorted(id(p) for p in model.trunk.parameters()) and len(set(in_blocks)) == len(in_blocks)
    assert model.feature_dim == reference.num_features
    assert model.eval()(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 3)
    assert list(model.spec.mean) == list(reference.pretrained_cfg["mean"])


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_freezing_the_first_k_timm_blocks_keeps_them_and_their_statistics(name):
    source = Classifier(spec(name))
    tuned = finetune(source, colour_set(8), "freeze:2", TrainConfig(epochs=1, batch_size=8, lr=0.05))
    for block_before, block_after in zip(source.blocks[:2], tuned.blocks[:2]):
        for key, value in block_before.state_dict().items():
            torch.testing.assert_close(block_after.state_dict()[key], value)  # weights and batch-norm statistics
    changed = [not torch.equal(a, b) for a, b in zip(source.blocks[2].parameters(), tuned.blocks[2].parameters())]
    assert any(changed)


def test_freeze_sets_the_owning_modules_of_frozen_timm_blocks_to_eval():
    model = Classifier(spec("resnet18"))
    freeze_blocks(model, 2)
    assert not model.trunk.bn1.training and not model.trunk.layer1[0].bn1.training
    assert model.trunk.layer2[0].bn1.training and model.training
    assert not model.trunk.conv1.weight.requires_grad and model.trunk.layer2[0].conv1.weight.requires_grad


def test_copy_k_takes_the_first_timm_blocks_from_the_source_and_starts_the_rest_fresh():
    torch.manual_seed(0)
    source = Classifier(spec("convnext_atto"))
    pretrain(source, colour_set(8), TrainConfig(epochs=1, batch_size=8))
    tuned = finetune(source, colour_set(8), "copy:2", TrainConfig(epochs=1, batch_size=8, seed=3))
    for a, b in zip(source.blocks[:2], tuned.blocks[:2]):
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(source.blocks[3].parameters()), next(tuned.blocks[3].parameters()))


def test_a_timm_model_saves_loads_and_copies_with_its_blocks(tmp_path):
    torch.manual_seed(0)
    model = Classifier(spec("efficientnet_b0")).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    save_model(tmp_path / "m", model)
    loaded, _ = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.eval()(images), model(images))
    twin = copy.deepcopy(model)  # its blocks view its own trunk, not the original's
    assert next(twin.blocks[0].parameters()) is twin.trunk.conv_stem.weight


def test_timm_weights_load_from_a_file_in_timm_key_names_and_the_head_is_new(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=1000)
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    weights = read_weights(tmp_path / "r18.safetensors")
    model = Classifier(spec("resnet18"), weights, "r18.safetensors").eval()
    torch.testing.assert_close(model.trunk.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert model.head.out_features == 3
    with pytest.raises(TlpipeError, match="do not fit timm:convnext_atto"):
        Classifier(spec("convnext_atto"), weights, "r18.safetensors")


def test_vit_weights_are_resampled_to_the_image_size():
    torch.manual_seed(2)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    model = Classifier(spec("vit_tiny_patch16_224", size=64), reference.state_dict(), "test-made")
    assert model.trunk.pos_embed.shape == (1, 1 + 16, 192)  # class token + 4 x 4 patches at 64 px
    torch.testing.assert_close(model.trunk.blocks[5].mlp.fc1.weight, reference.blocks[5].mlp.fc1.weight)


def test_unknown_timm_models_and_progressive_timm_models_are_refused():
    with pytest.raises(TlpipeError, match="'no_such_net' is not a timm model"):
        Classifier(spec("no_such_net"))
    with pytest.raises(TlpipeError, match="progressive networks need a backbone of sequential blocks"):
        Classifier(ModelSpec("timm:resnet18", ["a", "b"], 32, progressive=True))


@pytest.mark.parametrize("source, mean", [("timm:resnet18d.ra4_e3600_r224_in1k", 0.5), ("timm:resnet18d.ra2_in1k", 0.485),
                                          ("hf-hub:timm/resnet18d.ra4_e3600_r224_in1k@main", 0.5), ("r18d.safetensors", 0.485)])
def test_a_timm_backbone_normalises_as_its_weights_tag_does(tmp_path, source, mean):
    """resnet18d's tags were trained with different normalisations: the weights' tag decides, and the
    model keeps it through save and load."""
    weights = timm.create_model("resnet18d", num_classes=1000).state_dict()
    model = Classifier(spec("resnet18d"), weights, source)
    assert model.preprocess.mean.flatten()[0].item() == pytest.approx(mean, abs=1e-6)
    save_model(tmp_path / "m", model)
    assert load_model(tmp_path / "m")[0].preprocess.mean.flatten()[0].item() == pytest.approx(mean, abs=1e-6)
