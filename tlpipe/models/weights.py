"""Pretrained weights by name: a file (local or s3://), a torchvision weights enum, a Hugging Face Hub
repository (`hf-hub:<repo id>[@<revision>]`) or a timm pretrained tag (`timm:<model>.<tag>`).

Hub weights download into the standard caches (torch.hub's $TORCH_HOME/hub/checkpoints, the Hugging
Face cache) when the machine is online, and come from there when it is not (`HF_HUB_OFFLINE=1`, or no
network). An air-gapped cluster gets them once through `tlpipe weights mirror <name> s3://...` and then
names the mirrored file. Nothing here unpickles: safetensors where the hub has it, and `torch.load` runs
with weights_only=True.
"""

import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from tlpipe import storage
from tlpipe.errors import TlpipeError

WEIGHTS_ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Z0-9_]+$")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # safetensors first


def offline() -> bool:
    """Hugging Face's switch, read at call time, stands for every hub: set, nothing is downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def is_hub_name(name: str) -> bool:
    return bool(WEIGHTS_ENUM.match(name)) or name.startswith(("hf-hub:", "timm:"))


def _uncached(name: str, cache: Path | str, why: str) -> TlpipeError:
    return TlpipeError(
        f"{name} is not in the cache ({cache}) and {why}; on a machine with network run "
        f"`tlpipe weights mirror {name} s3://<bucket>/<prefix>` and pass the s3:// file it prints as "
        "pretrained_weights, or fill that cache."
    )


def torch_cache_file(url: str) -> Path:
    """Where torch.hub keeps the file of a download URL: $TORCH_HOME/hub/checkpoints/<its file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _from_url(name: str, url: str) -> Path:
    """The torch.hub cache's file for `url`, downloaded (hash-checked) when missing and online."""
    path = torch_cache_file(url)
    if path.is_file():
        return path
    if offline():
        raise _uncached(name, path, "HF_HUB_OFFLINE is set")
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None, progress=False)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a hash mismatch a RuntimeError
        raise _uncached(name, path, f"the download from {url} failed ({error})") from None
    return path


def _torchvision_enum(name: str) -> Path:
    from torchvision.models import get_weight

    try:
        url = get_weight(name).url
    except (ValueError, KeyError, AttributeError):
        raise TlpipeError(f"'{name}' is not a torchvision weights enum (e.g. ResNet18_Weights.IMAGENET1K_V1).") from None
    return _from_url(name, url)


def _hf_hub(name: str, repo: str, filename: str | None = None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = repo.partition("@")
    last_error = None
    for file in (filename,) if filename else HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, file, revision=revision or None, local_files_only=offline()))
        except EntryNotFoundError as error:  # no such file there (Local...: not cached, offline): try the next
            last_error = error
        except RepositoryNotFoundError:
            raise TlpipeError(f"{name}: there is no Hugging Face Hub repository {repo_id} (or it needs a token: HF_TOKEN).") from None
    if isinstance(last_error, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face Hub cannot be reached"
        raise _uncached(name, constants.HF_HUB_CACHE, why)
    raise TlpipeError(f"{name}: the repository has none of {', '.join(HUB_FILES)}.")


def _timm_tag(name: str) -> Path:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name.removeprefix("timm:"))
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise TlpipeError(f"{name} is not a timm pretrained tag (timm.list_pretrained() names them, e.g. timm:resnet50.a1_in1k).")
    if cfg.hf_hub_id:
        return _hf_hub(name, cfg.hf_hub_id, cfg.hf_hub_filename)
    return _from_url(name, cfg.url)


def hub_file(name: str) -> Path:
    """The local file of a hub name (downloaded into its cache if need be)."""
    if WEIGHTS_ENUM.match(name):
        return _torchvision_enum(name)
    if name.startswith("hf-hub:"):
        return _hf_hub(name, name.removeprefix("hf-hub:"))
    return _timm_tag(name)


def read_weights(location: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or PyTorch weights file (local or s3://), refusing pickled code,
    or from a hub name (see the module's docstring)."""
    if is_hub_name(str(location)):
        return read_weights(hub_file(str(location)))
    if storage.is_s3(str(location)):
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.download(str(location), Path(tmp) / Path(str(location)).name)
            return read_weights(local)
    path = Path(location)
    if not path.is_file():
        raise TlpipeError(f"pretrained weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise TlpipeError(f"pretrained weights {path} are not a valid safetensors file ({error}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TlpipeError(
            f"pretrained weights {path} cannot be loaded as plain tensors (refused: files that run code on load "
            f"are not accepted; {type(error).__name__})."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TlpipeError(f"pretrained weights {path} do not hold a state dict of tensors.")
    return state


def mirror(name: str, destination: str) -> str:
    """Copies the weights of a hub name to `destination` (an s3:// prefix or a folder) as one safetensors
    file, for machines with no network; returns its location, the value to pass as pretrained_weights."""
    if not is_hub_name(name):
        raise TlpipeError(f"{name} is not a hub name: give a torchvision weights enum, hf-hub:<repo id> or timm:<model>.<tag>.")
    if storage.is_s3(destination):
        storage.check_bucket(destination)  # before a download that may be large
    state = read_weights(name)
    target = f"{destination.rstrip('/')}/{re.sub(r'[^A-Za-z0-9._-]+', '--', name)}.safetensors"
    # clone: safetensors refuses tensors that share memory, which some checkpoints have
    state = {k: v.contiguous().clone() for k, v in state.items()}
    if not storage.is_s3(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(target).name
        save_file(state, str(local))
        storage.upload(local, target)
    return target
