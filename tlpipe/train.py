"""The one training loop every method uses.

A method supplies `step(p) -> (loss, metrics)` for training progress p in [0, 1); the loop owns the
device, mixed precision, the optimizer step, the learning-rate annealing and the per-epoch logging.
Methods read their data with tlpipe.data.loader.Batches; the loop syncs with the host once per epoch,
not per step. With several processes (tlpipe.distributed) each rank takes its share of every global batch.
"""

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tlpipe import distributed
from tlpipe.checkpoint import Checkpoint
from tlpipe.distributed import device
from tlpipe.errors import TlpipeError

Metrics = dict[str, torch.Tensor]
StepFn = Callable[[float], tuple[torch.Tensor, Metrics]]
LogFn = Callable[[int, dict[str, float], torch.nn.Module | None], None]  # epoch, its metrics, the model trained


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_dir: str = ""  # local directory or s3:// prefix; empty: no checkpoints
    checkpoint_every: int = 1  # epochs
    checkpoint_minutes: float = 10.0  # also mid-epoch, once this long has passed since the last one (0: never)
    nproc: int = 1  # data-parallel processes; 0: one per GPU
    augment: str = "none"  # of the labelled images a loop trains on (tlpipe.augment); in adaptation, the source's
    compile: bool = False  # torch.compile the network (CUDA)
    # Transfer (fine-tuning, zero-shot, adaptation; see transfer_groups): the transferred backbone's learning
    # rate as a fraction of lr, the rate of new layers (head, bottleneck, discriminator). 0.1 is the field's
    # usual choice for fine-tuning; the pipelines set it per stage (finetune_backbone_lr, adapt_backbone_lr).
    backbone_lr: float = 0.1
    # Adaptation (tlpipe.methods.domain): a bottleneck layer of this width between backbone and head (0: none),
    # and SDAT's neighbourhood radius for methods named with +sdat.
    bottleneck: int = 0
    sdat_rho: float = 0.02

    def __post_init__(self):
        # (lr 0 is allowed here: a test or a study may train with the weights held; pipelines refuse it.)
        if self.epochs < 1 or self.batch_size < 1:
            raise TlpipeError(f"training needs epochs and batch_size of 1 or more, got epochs={self.epochs}, "
                              f"batch_size={self.batch_size}.")

    @classmethod
    def from_step(cls, parameters: dict, **overrides) -> "TrainConfig":
        """A training step's config from its component's parameters, taken by field name (checkpoint_root
        is where checkpoint_dir lies); `overrides` name the rest (e.g. augment=source_augment)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in parameters.items() if k in fields}
        return cls(**given, checkpoint_dir=parameters.get("checkpoint_root", ""), **overrides)


def prepare(module: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Moves `module` to the device (channels_last on CUDA) and returns the network to call in steps:
    the module, in DDP across processes, compiled on request."""
    if device().type == "cuda":
        module.to(device(), memory_format=torch.channels_last)
    else:
        module.to(device())
    net = distributed.wrap(module)
    return torch.compile(net) if config.compile else net


def seed_everything(seed: int) -> None:
    """Seeds every RNG a step touches (batch order and augmentation follow the seed on their own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def annealed_lr(p: float) -> float:
    """Ganin & Lempitsky's schedule, as a factor of the base rate: 1 / (1 + 10 p)^0.75."""
    return 1.0 / (1.0 + 10.0 * p) ** 0.75


def sgd(param_groups, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def transfer_groups(backbone, new, config: TrainConfig, **backbone_options) -> list[dict]:
    """The one learning-rate policy of every method that transfers a backbone: its trainable transferred
    parameters at config.backbone_lr x lr (with `backbone_options`, e.g. weight_decay), the new layers'
    (head, bottleneck, alignment module) at lr."""
    backbone = [p for p in backbone if p.requires_grad]
    head = {"params": [p for p in new if p.requires_grad]}
    return ([{"params": backbone, "lr": config.lr * config.backbone_lr, **backbone_options}] if backbone else []) + [head]


def fit(
    step: StepFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    log: LogFn | None = None,
    checkpoint_dir: str = "",
    checkpoint_every: int = 1,
    state: dict | None = None,
    images_per_step: int = 0,
    checkpoint_minutes: float = 0.0,
) -> dict[str, float]:
    """Runs epochs x steps_per_epoch optimizer steps; returns the last epoch's mean metrics.

    With `checkpoint_dir`, saves the optimizer and `state` (models, batch iterators) every
    `checkpoint_every` epochs, and within an epoch once `checkpoint_minutes` have passed since the last
    save (an epoch of a large dataset is long), and, if a checkpoint is there already, resumes from it,
    mid-epoch included. With `images_per_step` (all ranks together), the metrics include images_per_second.
    """
    total = max(1, epochs * steps_per_epoch)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    use_amp = device().type == "cuda"
    last: dict[str, float] = {}
    progress = _Progress()
    checkpoint = (Checkpoint(checkpoint_dir, {"optimizer": optimizer, "progress": progress, **(state or {})})
                  if checkpoint_dir else None)
    first = checkpoint.restore() if checkpoint else 0
    if first or progress.step:
        within = f", step {progress.step}/{steps_per_epoch}" if progress.step else ""
        print(f"resuming from the checkpoint after epoch {first}/{epochs}{within}", flush=True)
    saved_at = time.monotonic()
    for epoch in range(first, epochs):
        started = time.perf_counter()
        sums = {name: value.to(device()) for name, value in progress.sums.items()}
        start = progress.step
        progress.reset()
        for i in range(start, steps_per_epoch):
            p = (epoch * steps_per_epoch + i) / total
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * annealed_lr(p)
            with torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=use_amp):
                loss, metrics = step(p)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            if (checkpoint and checkpoint_minutes and distributed.is_main() and i + 1 < steps_per_epoch
                    and time.monotonic() - saved_at >= checkpoint_minutes * 60):
                progress.step, progress.sums = i + 1, sums
                checkpoint.save(epoch)
                progress.reset()
                saved_at = time.monotonic()
        # The one host synchronisation of the epoch.
        last = {name: float(value) / steps_per_epoch for name, value in distributed.all_reduce_mean(sums).items()}
        if images_per_step:
            last["images_per_second"] = images_per_step * (steps_per_epoch - start) / (time.perf_counter() - started)
        if log and distributed.is_main():
            log(epoch, last, (state or {}).get("model"))
        if checkpoint and distributed.is_main() and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            checkpoint.save(epoch + 1)
            saved_at = time.monotonic()
    return last


class _Progress:
    """Where a checkpoint stands within an epoch: the steps done and the epoch's running metric sums
    (rank 0's; on resume every rank starts from them, which moves only the logged means of that epoch)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.step, self.sums = 0, {}

    def state_dict(self) -> dict:
        return {"step": self.step, "sums": self.sums}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.sums = int(state["step"]), dict(state["sums"])
