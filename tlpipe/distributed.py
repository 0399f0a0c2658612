"""Data-parallel training with DDP: one process per GPU (NCCL), or several CPU processes (gloo).

`run(nproc, fn, *args)` starts nproc processes with torch.multiprocessing, each calls fn(*args) with
a process group set up; the training loop then shards every global batch across ranks and wraps
models in DistributedDataParallel (`wrap`), so the gradient of a step is that of the whole batch.
Only rank 0 logs and checkpoints; its return value, and the trained state of a model passed as
first argument, come back to the calling process, which alone writes artifacts.
"""

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tlpipe.errors import TlpipeError


def device() -> torch.device:
    """Where this process computes: its rank's GPU when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def processes(nproc: int) -> int:
    """nproc as given, or 0 for one per visible GPU (1 on CPU): matches the GPU limit a cluster gives."""
    if nproc < 0:
        raise TlpipeError(f"nproc={nproc} must be 0 (one process per GPU) or more.")
    if nproc == 0:
        return max(1, torch.cuda.device_count())
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise TlpipeError(f"nproc={nproc} but this node has {torch.cuda.device_count()} GPU(s).")
    return nproc


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module in DistributedDataParallel when several processes train, else the module itself."""
    if rank_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    # A multi-task model fine-tuned or adapted on one task leaves its other heads without gradients, which
    # DDP must be told to expect; every other model uses all its parameters (the cheaper default).
    unused = bool(getattr(module, "tasks", None))
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Averages metric tensors over ranks (once per epoch: it synchronises)."""
    world = rank_world()[1]
    if world == 1:
        return values
    for value in values.values():
        dist.all_reduce(value)
    return {name: value / world for name, value in values.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, result_path: str, fn, args, kwargs) -> None:
    from tlpipe.lifetime import follow_parent

    follow_parent()  # workers end with `tlpipe run` too
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world)
    try:
        result = fn(*args, **kwargs)
        if rank == 0:
            model = args[0] if args and isinstance(args[0], torch.nn.Module) else None
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None
            torch.save({"result": result, "state": state}, result_path)
    finally:
        dist.destroy_process_group()


def run(nproc: int, fn, *args, **kwargs):
    """fn(*args, **kwargs) on nproc processes (1: in this process); rank 0's result.

    A model passed as the first argument ends in the state rank 0 trained it to, as if fn had run here.
    """
    world = processes(nproc)
    if world == 1:
        return fn(*args, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = str(Path(tmp) / "result.pt")
        try:
            mp.spawn(_worker, args=(world, _free_port(), result_path, fn, args, kwargs), nprocs=world, join=True)
        except mp.ProcessRaisedException as error:
            # A user mistake found in a worker stays one sentence; anything else keeps its traceback.
            mark = "tlpipe.errors.TlpipeError: "
            if mark in str(error):
                raise TlpipeError(str(error).rsplit(mark, 1)[1].strip()) from None
            raise
        # Written by our own rank 0 a moment ago; it holds modules, so it is not weights-only.
        out = torch.load(result_path, weights_only=False)
    if out["state"] is not None:
        args[0].load_state_dict(out["state"])
    return out["result"]
