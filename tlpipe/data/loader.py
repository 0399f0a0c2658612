"""How training and scoring read an ImageSet, wherever its images live.

`Batches` is the one way every method reads training data: endless shuffled minibatches, augmented,
on the device. Each epoch's order and each image's augmentation seed are a function of (seed, stream,
epoch) alone, so the loader's state is two numbers (epoch, step): a checkpoint holds them, and a
resumed run reads the same remaining order with the same draws. With several processes each rank
takes its share of every global batch: ranks read disjoint images whose union is the epoch.

The images come from one of two places, with the same batches either way (tests check it):
- held on the device: a set in memory, or a sharded set whose pixels fit in RESIDENT_BYTES (decoded
  once; the built-in digit domains). A measured optimisation: no decoding after the first epoch.
- decoded by DataLoader worker processes from the shards (tlpipe.data.shards), which also augment,
  into pinned memory, a few batches ahead (at most IN_FLIGHT_BYTES a step): memory does not grow with
  the dataset.
"""

import hashlib
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlpipe import augment as augmentation
from tlpipe import distributed, settings
from tlpipe.data.dataset import ImageSet
from tlpipe.data.shards import ShardedImages
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError

RESIDENT_BYTES = int(os.environ.get("TLPIPE_RESIDENT_MB", "1024")) * 2**20
PREFETCH = 4  # batches each worker prepares ahead, at most
# Decoded batches in flight from a step's workers to its loop, all its loaders together: they pass through
# /dev/shm (a pod's memory-backed volume, --shm-size) and pinned memory, so they are bounded.
IN_FLIGHT_BYTES = int(os.environ.get("TLPIPE_IN_FLIGHT_MB", "1024")) * 2**20


def default_workers() -> int:
    """DataLoader worker processes: the step's CPUs shared among its data-parallel ranks."""
    return max(1, settings.cpus() // distributed.rank_world()[1])


def epoch_plan(n: int, seed: int, stream: str, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The order of an epoch over n images and one augmentation seed per position."""
    key = hashlib.blake2b(f"{seed}/{stream}/{epoch}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)
    return torch.randperm(n, generator=generator), torch.randint(2**62, (n,), generator=generator)


class _Plan:
    """DataLoader batch sampler: this rank's (image, seed) pairs of every global batch, from (epoch, step) on."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: str, epoch: int, step: int):
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.epoch, self.step = epoch, step
        self.rank, self.world = distributed.rank_world()

    def __iter__(self):
        for order, seeds in self.spans():
            yield list(zip(order.tolist(), seeds.tolist()))

    def spans(self, on: torch.device | None = None):
        """Each batch's (images, seeds) as tensors; with `on`, each epoch's plan is copied there once and
        sliced there, so that a step copies nothing from the host (no synchronisation with the GPU)."""
        epoch, step = self.epoch, self.step
        while True:
            order, seeds = epoch_plan(self.n, self.seed, self.stream, epoch)
            if on is not None:
                order, seeds = order.to(on), seeds.to(on)
            for b in range(step, self.n // self.batch_size):
                span = slice(b * self.batch_size + self.rank, (b + 1) * self.batch_size, self.world)
                yield order[span], seeds[span]
            epoch, step = epoch + 1, 0


def _viewed(images: torch.Tensor, seeds: torch.Tensor, augments: list) -> list[torch.Tensor]:
    """One augmented batch per view, each view under seeds of its own (the first under the plan's)."""
    return [images if augment is None else augment(images, seeds if j == 0 else augmentation.derived_seeds(seeds, j))
            for j, augment in enumerate(augments)]


class _Decoded(Dataset):
    """Decodes and augments a batch of (image, seed) pairs into its views; in DataLoader workers."""

    def __init__(self, images, labels: np.ndarray | None, views: tuple[str, ...]):
        self.images, self.labels, self.augments = images, labels, [augmentation.get(view) for view in views]

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, plan: list[tuple[int, int]]):
        rows = [row for row, _ in plan]
        # Sharded images are read in storage order (each chunk's together), then stacked in the plan's.
        order = self.images.storage_order(rows) if isinstance(self.images, ShardedImages) else rows
        decoded = {row: self.images[row] for row in order}
        images = torch.from_numpy(np.stack([decoded[row] for row in rows]))
        views = _viewed(images, torch.tensor([seed for _, seed in plan], dtype=torch.int64), self.augments)
        labels = torch.from_numpy(self.labels[rows]) if self.labels is not None else None
        return views, labels


def _as_is(batch):
    return batch


def resident(images) -> bool:
    return not isinstance(images, ShardedImages) or int(np.prod(images.shape)) <= RESIDENT_BYTES


class Batches:
    """Endless shuffled minibatches of `data`'s images (and labels, unless labels=False) on the device,
    augmented with `augment` (tlpipe.augment); with a tuple of augmentations, each batch holds that many
    views of the same images, each drawn on its own (self-training's weak and strong views). `stream`
    names the sequence, so that two loaders of one run (source and target) shuffle differently under one
    seed."""

    def __init__(self, data: ImageSet, batch_size: int, seed: int, stream: str = "",
                 augment: str | tuple[str, ...] = "none", labels: bool = True, workers: int | None = None,
                 share: int = 1):
        """`share`: how many loaders the step reads through at once (adaptation: source and target); they
        split its CPUs and its IN_FLIGHT_BYTES instead of each taking them all."""
        if len(data) == 0:
            raise TlpipeError("cannot train on an empty split.")
        self.data, self.seed, self.stream, self.with_labels = data, seed, stream, labels
        self.views = (augment,) if isinstance(augment, str) else tuple(augment)
        for view in self.views:
            augmentation.get(view)
        self.n = len(data)
        self.batch_size = min(batch_size, self.n)
        world = distributed.rank_world()[1]
        if self.batch_size % world:
            raise TlpipeError(f"batch size {self.batch_size} does not split evenly over {world} processes.")
        self.workers = max(1, default_workers() // share) if workers is None else workers
        batch_bytes = self.batch_size // world * int(np.prod(data.images.shape[1:])) * len(self.views)
        self.prefetch = max(1, min(PREFETCH, IN_FLIGHT_BYTES // (share * max(1, self.workers) * batch_bytes)))
        self.epoch, self.step = 0, 0
        self._iterator = None
        self.on_device = resident(data.images)
        if self.on_device:
            self.images = torch.from_numpy(np.ascontiguousarray(np.asarray(data.images))).to(device())
            self.labels = torch.from_numpy(data.labels).to(device())

    @property
    def per_epoch(self) -> int:
        return self.n // self.batch_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._iterator = None  # the plan (and the workers) restart from the loaded position

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._iterator is None:
            self._iterator = self._batches(_Plan(self.n, self.batch_size, self.seed, self.stream, self.epoch, self.step))
        views, labels = next(self._iterator)
        self.step += 1
        if self.step == self.per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return (*views, labels) if self.with_labels else tuple(views)

    def _batches(self, plan: "_Plan"):
        """The plan's batches on the device: gathered from the images held there, or decoded by workers."""
        if self.on_device:
            augments = [augmentation.get(view) for view in self.views]
            for index, seeds in plan.spans(on=self.images.device):
                yield _viewed(self.images[index], seeds, augments), self.labels[index]
            return
        loader = DataLoader(_Decoded(self.data.images, self.data.labels, self.views), batch_sampler=plan,
                            collate_fn=_as_is, num_workers=self.workers, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=self.prefetch if self.workers else None)
        for views, labels in loader:
            yield [v.to(device(), non_blocking=True) for v in views], labels.to(device(), non_blocking=True)


def image_batches(images, batch_size: int, workers: int | None = None):
    """Consecutive uint8 NHWC batches of `images` (numpy, tensor or ShardedImages) as CPU tensors, in
    order; sharded images are decoded by worker processes a few batches ahead."""
    if not isinstance(images, ShardedImages):
        images = torch.as_tensor(images)
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
        return
    workers = default_workers() if workers is None else workers
    workers = min(workers, (len(images) - 1) // batch_size)  # no worker processes for a batch or two
    spans = ([(row, 0) for row in range(i, min(i + batch_size, len(images)))] for i in range(0, len(images), batch_size))
    loader = DataLoader(_Decoded(images, None, ("none",)), batch_sampler=spans, collate_fn=_as_is,
                        num_workers=max(0, workers), pin_memory=torch.cuda.is_available(),
                        prefetch_factor=PREFETCH if workers > 0 else None)
    for (batch,), _ in loader:
        yield batch
