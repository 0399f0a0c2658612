"""Pretrained weights by hub name: the Hugging Face cache offline, timm's pretrained tags, the torch.hub
download (from a local HTTP server standing in for the network), the offline-and-uncached sentence,
and `tlpipe weights mirror`. The S3 side of the mirror is in test_stack."""

import hashlib
import http.server
import subprocess
import sys
import threading

import pytest
import timm
import torch
from helpers import put_in_hf_cache
from safetensors.torch import load_file

from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier, ModelSpec, read_weights
from tlpipe.models import weights as hub


def test_hf_hub_weights_load_from_the_cache_offline_safetensors_first(hf_cache):
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", num_classes=1000)
    other = {k: torch.zeros_like(v) for k, v in reference.state_dict().items()}
    put_in_hf_cache(hf_cache, "team/r18", {"model.safetensors": reference.state_dict(), "pytorch_model.bin": other})
    model = Classifier(ModelSpec("timm:resnet18", ["a", "b"], 32), read_weights("hf-hub:team/r18"), "hf-hub:team/r18")
    torch.testing.assert_close(model.trunk.conv1.weight, reference.conv1.weight)


def test_a_repository_with_only_pytorch_weights_loads_them_safely(hf_cache):
    state = {"w": torch.arange(4.0)}
    put_in_hf_cache(hf_cache, "team/old", {"pytorch_model.bin": state})
    torch.testing.assert_close(read_weights("hf-hub:team/old")["w"], state["w"])


def test_a_timm_pretrained_tag_resolves_to_its_hub_repository(hf_cache):
    reference = timm.create_model("convnext_atto", num_classes=1000)
    hub_id = timm.models.get_pretrained_cfg("convnext_atto.d2_in1k").hf_hub_id
    put_in_hf_cache(hf_cache, hub_id, {"model.safetensors": reference.state_dict()})
    weights = read_weights("timm:convnext_atto.d2_in1k")
    model = Classifier(ModelSpec("timm:convnext_atto", ["a", "b"], 32), weights, "timm:convnext_atto.d2_in1k")
    torch.testing.assert_close(model.trunk.stages[2].blocks[0].conv_dw.weight, reference.stages[2].blocks[0].conv_dw.weight)


def test_uncached_weights_offline_get_one_sentence_with_the_cache_and_the_mirror_command(hf_cache):
    for name in ("hf-hub:team/absent", "timm:resnet50.a1_in1k"):
        with pytest.raises(TlpipeError, match=rf"is not in the cache \({hf_cache}\) and HF_HUB_OFFLINE is set.*"
                                              rf"`tlpipe weights mirror {name} s3://"):
            read_weights(name)
    with pytest.raises(TlpipeError, match="is not a timm pretrained tag"):
        read_weights("timm:no_such_model.x")


@pytest.fixture
def web(tmp_path):
    """A local HTTP server over tmp_path/www: the network, for torch.hub's download."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_weights_of_a_url_download_hash_checked_into_the_torch_cache_then_come_from_it(tmp_path, web, monkeypatch):
    root, url = web
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    state = {"w": torch.arange(6.0)}
    torch.save(state, root / "tmp.pth")
    digest = hashlib.sha256((root / "tmp.pth").read_bytes()).hexdigest()[:8]
    (root / "tmp.pth").rename(root / f"net-{digest}.pth")  # torch.hub's naming: the hash prefix in the name
    path = hub._from_url("Net_Weights.TEST", f"{url}/net-{digest}.pth")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / f"net-{digest}.pth"
    torch.testing.assert_close(read_weights(path)["w"], state["w"])
    (root / f"net-{digest}.pth").unlink()  # gone from the network: the cache serves
    assert hub._from_url("Net_Weights.TEST", f"{url}/net-{digest}.pth") == path
    (root / "bad-00000000.pth").write_bytes(b"not the file the name promises")
    with pytest.raises(TlpipeError, match="is not in the cache .* the download from .* failed"):
        hub._from_url("Net_Weights.BAD", f"{url}/bad-00000000.pth")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "bad-00000000.pth").exists()


def test_weights_mirror_writes_one_safetensors_file_that_pretrained_weights_reads(hf_cache, tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("resnet18", num_classes=1000)
    put_in_hf_cache(hf_cache, "team/r18", {"pytorch_model.bin": reference.state_dict()})
    result = subprocess.run([sys.executable, "-m", "tlpipe.cli", "weights", "mirror", "hf-hub:team/r18", str(tmp_path / "mirror")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    mirrored = tmp_path / "mirror" / "hf-hub--team--r18.safetensors"
    assert f"mirrored hf-hub:team/r18 to {mirrored}" in result.stdout
    torch.testing.assert_close(load_file(str(mirrored))["layer4.1.bn2.running_var"], reference.layer4[1].bn2.running_var)
    absent = subprocess.run([sys.executable, "-m", "tlpipe.cli", "weights", "mirror", "hf-hub:team/absent", str(tmp_path / "m2")],
                            capture_output=True, text=True)
    assert absent.returncode == 2 and "tlpipe: error: hf-hub:team/absent is not in the cache" in absent.stderr
    assert not (tmp_path / "m2").exists()
