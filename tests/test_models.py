import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier, ModelSpec, load_model, read_weights, save_model
from tlpipe.scoring import predict


def spec(backbone="small-cnn", size=32):
    return ModelSpec(backbone=backbone, classes=["a", "b", "c"], input_size=size)


def test_save_and_load_give_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    model = Classifier(spec()).eval()
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    save_model(tmp_path / "m", model, method="test")
    loaded, meta = load_model(tmp_path / "m")
    assert meta["method"] == "test" and meta["spec"]["classes"] == ["a", "b", "c"]
    torch.testing.assert_close(loaded.eval()(torch.from_numpy(images)), model(torch.from_numpy(images)))


def test_scoring_batches_hold_the_same_pixels_at_any_image_size(monkeypatch):
    from tlpipe import scoring

    monkeypatch.setattr(scoring, "PIXELS_PER_BATCH", 32 * 32 * 8)
    model = Classifier(spec()).eval()
    small = list(scoring.scoring_batches(model, np.zeros((20, 32, 32, 3), dtype=np.uint8)))
    large = list(scoring.scoring_batches(model, np.zeros((20, 64, 64, 3), dtype=np.uint8)))
    assert [len(b) for b in small] == [8, 8, 4] and [len(b) for b in large] == [2] * 10
    images = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    whole = model.head(model.features(torch.from_numpy(images))).argmax(1)
    assert torch.equal(predict(model, images), whole)  # batching changes no prediction


def test_model_resizes_any_input_size():
    model = Classifier(spec()).eval()
    for h, w in [(32, 32), (17, 40), (100, 64)]:
        out = predict(model, np.zeros((2, h, w, 3), dtype=np.uint8))
        assert out.shape == (2,) and out.dtype == torch.int64


def test_resnet18_builds_without_downloads_and_splits_into_blocks():
    model = Classifier(spec("resnet18")).eval()
    assert len(model.blocks) == 5 and model.feature_dim == 512
    assert model(torch.zeros(2, 32, 32, 3, dtype=torch.uint8)).shape == (2, 3)


def test_pretrained_torchvision_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None)  # stands in for a downloaded ImageNet checkpoint
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    save_file(reference.state_dict(), str(tmp_path / "resnet18.safetensors"))
    for name in ("resnet18.pth", "resnet18.safetensors"):
        model = Classifier(spec("resnet18"), read_weights(tmp_path / name), name)
        torch.testing.assert_close(model.blocks[0].conv1.weight, reference.conv1.weight)
        torch.testing.assert_close(model.blocks[4].layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_weights_for_another_backbone_are_refused(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(TlpipeError, match="do not fit this backbone"):
        Classifier(spec("small-cnn"), read_weights(tmp_path / "r18.pth"), "r18.pth")


@pytest.mark.parametrize("backbone, blocks, feature_dim", [
    ("resnet50", 5, 2048), ("mobilenet_v3_large", 5, 1280), ("mobilenet_v3_small", 5, 1024), ("efficientnet_b0", 7, 1280),
])
def test_torchvision_backbones_build_with_weights_none_and_split_into_blocks(backbone, blocks, feature_dim):
    model = Classifier(spec(backbone, 64)).eval()
    assert len(model.blocks) == blocks and model.feature_dim == feature_dim
    assert model(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape == (2, 3)
    # Every parameter of the torchvision model except its last classifier layer sits in the blocks.
    from torchvision import models

    reference = getattr(models, backbone)(weights=None)
    head = {"resnet50": "fc.", "efficientnet_b0": "classifier."}.get(backbone, "classifier.3.")
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith(head))
    assert sum(p.numel() for p in model.blocks.parameters()) == expected


def test_a_weights_enum_name_reads_the_torch_cache_file(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v3_small

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    cache = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    with pytest.raises(TlpipeError, match=f"is not in the cache \\({cache}\\) and HF_HUB_OFFLINE is set.*tlpipe weights mirror {name}"):
        read_weights(name)
    torch.manual_seed(2)
    reference = mobilenet_v3_small(weights=None)  # stands in for the file torch.hub would have downloaded
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = Classifier(spec("mobilenet_v3_small"), read_weights(name), name)
    torch.testing.assert_close(model.blocks[0][0][0].weight, reference.features[0][0].weight)
    torch.testing.assert_close(model.blocks[-1][-3].weight, reference.classifier[0].weight)
    with pytest.raises(TlpipeError, match="not a torchvision weights enum"):
        read_weights("ResNet18_Weights.NO_SUCH")


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_in_a_weights_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    with pytest.raises(TlpipeError, match="refused"):
        read_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
