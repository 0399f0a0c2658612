"""Data-parallel training with DDP, every process started by torchrun's launcher (torch.distributed.run):
one process per GPU (NCCL), or several CPU processes (gloo).

`run(nproc, fn, *args)` trains fn(*args) on every rank of a process group; the training loop shards each
global batch across ranks and wraps models in DistributedDataParallel (`wrap`), so the gradient of a
step is that of the whole batch. Only global rank 0 logs, checkpoints and writes artifacts. Two ways in:

- On one node, `run` starts nproc workers with torch's elastic agent (what torchrun runs: a c10d
  rendezvous on localhost, RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR in each worker's environment); rank 0's
  result and the trained state of a model passed first come back to the calling step process.
- On several nodes (a Kubeflow Trainer job, `tlpipe compile --nodes N`), torchrun starts
  `python -m tlpipe.launch` on every node: global rank 0 runs the step, and its `run` sends fn and its
  arguments to the other ranks, which wait in `follow()`. The step's code is the same either way.
"""

import copy
import logging
import os
import signal
import tempfile
import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

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


def launched() -> bool:
    """Whether torchrun started this process as one rank of a job (not as one of `run`'s own workers)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and not os.environ.get("TLPIPE_WORKER")


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


def join() -> None:
    """Joins the process group torchrun's environment describes (once per process). A rank waits for the
    others at most TLPIPE_COLLECTIVE_TIMEOUT seconds (30 minutes): a node that died fails the job then,
    where nothing else (no Kubernetes JobSet, locally) stops it."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get("TLPIPE_COLLECTIVE_TIMEOUT", "1800")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)


def _worker(fn, args, kwargs):
    """One of `run`'s local workers: fn on its rank; rank 0 returns fn's result and the model's state."""
    from tlpipe.lifetime import follow_parent

    follow_parent()  # workers end with `tlpipe run` too
    # The arguments came through torch.multiprocessing, which leaves CPU tensors in memory shared with the
    # step process and the other workers: without a copy of its own, every rank would update the same
    # parameters (on CPU; a GPU rank moves its model to its own device anyway).
    own = lambda value: copy.deepcopy(value) if isinstance(value, torch.nn.Module) else value  # noqa: E731
    args, kwargs = tuple(map(own, args)), {key: own(value) for key, value in kwargs.items()}
    join()
    try:
        result = fn(*args, **kwargs)
        if dist.get_rank() != 0:
            return None
        model = args[0] if args and isinstance(args[0], torch.nn.Module) else None
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None
        return {"result": result, "state": state}
    finally:
        dist.destroy_process_group()


def run(nproc: int, fn, *args, **kwargs):
    """fn(*args, **kwargs) on every rank (nproc 1 outside torchrun: in this process); rank 0's result.

    A model passed as the first argument ends in the state rank 0 trained it to, as if fn had run here.
    """
    if launched():
        join()
        if rank_world()[1] > 1:
            dist.broadcast_object_list([(fn, args, kwargs)], src=0)  # to the ranks in follow()
        return fn(*args, **kwargs)
    world = processes(nproc)
    if world == 1:
        return fn(*args, **kwargs)
    out = _launch_local(world, fn, args, kwargs)
    if out["state"] is not None:
        args[0].load_state_dict(out["state"])
    return out["result"]


def _launch_local(world: int, fn, args, kwargs) -> dict:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    # The agent logs each worker's traceback; the exception raised here carries it (a user's mistake: one sentence).
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing.spawn")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    os.environ["TLPIPE_WORKER"] = "1"  # inherited by the workers only: they are not torchrun-launched steps
    try:
        with tempfile.TemporaryDirectory(prefix="tlpipe-ddp-") as logs:  # the workers' error files
            # torchrun's standalone mode: a c10d rendezvous on a free local port, no restarts (a retried step
            # resumes from its checkpoint instead).
            config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=f"tlpipe-{uuid.uuid4().hex[:12]}",
                                  rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                                  start_method="spawn", monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=logs))
            return elastic_launch(config, _worker)(fn, args, kwargs)[0]
    except ChildFailedError as error:
        raise _user_error(error) or error from None
    finally:
        del os.environ["TLPIPE_WORKER"]
        for log, level in zip(loggers, levels):
            log.setLevel(level)
        for sig, handler in handlers.items():  # the agent's handlers stop the workers; the step's come back
            signal.signal(sig, handler)


def _user_error(error) -> TlpipeError | None:
    """A user's mistake found in a worker, as the one sentence it was raised with (from torchrun's error file)."""
    mark = "TlpipeError: "
    for failure in error.failures.values():
        message = failure.message
        text = message.get("message", "") if isinstance(message, dict) else str(message)
        if mark in text:
            return TlpipeError(text.rsplit(mark, 1)[1].strip())
    return None


def follow() -> None:
    """A rank other than 0 of a torchrun job: runs each fn rank 0's `run` sends, until rank 0 says done."""
    join()
    while True:
        job = [None]
        dist.broadcast_object_list(job, src=0)
        if job[0] is None:
            break
        fn, args, kwargs = job[0]
        fn(*args, **kwargs)
    dist.destroy_process_group()


def release() -> None:
    """Rank 0 of a torchrun job, its step done: lets the ranks in follow() end."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.broadcast_object_list([None], src=0)
        dist.destroy_process_group()
