import os

import pytest
import torch
from helpers import tlpipe

from tlpipe import storage

torch.set_num_threads(2)


def _cost(item) -> int:
    """-1 for the images (a build, then every step in a container), 0 for whole pipeline runs and the stack,
    1 for other slow tests, 2 for unit tests."""
    marks = {m.name for m in item.iter_markers()}
    return -1 if "images" in marks else 0 if marks & {"e2e", "stack"} else 1 if "slow" in marks else 2


def pytest_collection_modifyitems(items):
    """Files in order of cost, the costliest first, each file's tests kept in their order. The workers
    take whole files (scripts/test: --dist loadfile --no-loadscope-reorder), so a long file started
    last would run on its own at the end while the other worker idles."""
    file_cost: dict[str, int] = {}
    for item in items:
        file_cost[item.path] = min(file_cost.get(item.path, 2), _cost(item))
    order = {path: i for i, path in enumerate(file_cost)}
    items.sort(key=lambda item: (file_cost[item.path], order[item.path]))


@pytest.fixture
def tlpipe_home(tmp_path, monkeypatch):
    """An empty embedded default (MLflow on SQLite, pipeline root) for one test."""
    home = tmp_path / "tlpipe-home"
    monkeypatch.setenv("TLPIPE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, for this process and the tlpipe processes a test starts
    (helpers.put_in_hf_cache fills it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack (SeaweedFS S3 + MLflow server) on free loopback ports, started by tlpipe's own
    command, its variables exported for the module's tests, stopped (and the variables restored) after."""
    home = tmp_path_factory.mktemp("stack") / "home"
    saved = dict(os.environ)
    try:
        started = tlpipe(home, "stack", "up")
        assert started.returncode == 0, started.stderr[-3000:]
        lines = tlpipe(home, "stack", "env").stdout.splitlines()
        env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        os.environ.update(env)
        storage.client.cache_clear()
        yield home, env
    finally:
        os.environ.clear()
        os.environ.update(saved)
        storage.client.cache_clear()
        tlpipe(home, "stack", "down")
