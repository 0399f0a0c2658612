"""Ingest and the training loader at scale: photo folders of N synthetic JPEGs at 224 px; prints
markdown tables.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,50000,200000] [--s3 50000] [--loader 50000]
                                         [--runs 2000,8000] [--validation 300,1200,4800,19200]

For each N it writes a folder of N photo-like JPEGs (10 classes: smooth colour fields, shapes and
grain, about the size of a real 224 px JPEG) and runs tlpipe's ingest step on it as the source, with a
fixed 1,000-image folder as the target, in a child process, sampling the resident memory of that
process and its children (the decoding workers) every 50 ms. --s3 uploads a folder of that size to
the local stack (SeaweedFS, started here) and ingests it from s3://. Then, on the source_train
artifact of the --loader run, it measures reads from the shards in storage and in random order, the
training loader (decode + `photo` augmentation, no model) with 0, 1 and 2 worker processes, and
ResNet-18's training step at 224 px on this machine. --runs runs the whole transfer pipeline (`tlpipe
run`, one epoch per training step, 128 px) on folders of each size and reports every step's peak resident
memory (the step's process with its workers), to show which steps grow with the number of images;
--validation measures pretrain's epoch with its validation pass on source_val splits of each size.
Space: about 3x the folder's size on the working disk (folder, staged shards, split artifacts).
"""

import argparse
import datetime
import gc
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tlpipe.data.examples import make_folder

CLASSES = 10  # as photos.py writes them
SIZE = 224
TARGET_IMAGES = 1000

INGEST = """
import sys
from tlpipe.steps.common import SPLITS
from tlpipe.steps.ingest import ingest
source, target, out = sys.argv[1:4]
ingest(source, target, 5, 0, 224, {n: f"{out}/{n}" for n in SPLITS}, "scale", "scale")
"""


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_measured(command: list[str], env: dict) -> tuple[float, int]:
    """Wall time and peak resident memory (the process and all its children, sampled) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    output = process.stdout.read()
    if process.returncode:
        sys.exit(f"ingest failed:\n{output}")
    return seconds, peak


def ingest(source: str, target: Path, out: Path, home: Path, extra_env: dict | None = None) -> tuple[float, int]:
    env = {**os.environ, "TLPIPE_HOME": str(home), **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None) if not extra_env else None
    return run_measured([sys.executable, "-c", INGEST, source, f"imagefolder:{target}", str(out)], env)


# A KFP task's process names its outputs' folder: <pipeline root>/<run>/tlpipe-<pipeline>-<time>/<task>/.
_TASK = re.compile(r"/tlpipe-[a-z-]+-[0-9-]+/([a-z0-9-]+)/executor_output\.json")
RUN_PARAMETERS = ["image_size=128", "source_epochs=1", "finetune_epochs=1", "adapt_epochs=1", "target_labels_per_class=5"]


def _memory(pid: int) -> tuple[int, int]:
    """A process's proportional set size (PSS: pages shared with its forked workers count once) and the
    part of it that is not file-backed (anonymous and shared memory): mapped files, such as the shard
    chunks read through mmap, are page cache the kernel can drop, not memory the step holds."""
    fields = dict(line.split(":")[:2] for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    kib = {name: int(value.split()[0]) * 1024 for name, value in fields.items()}
    return kib["Pss"], kib["Pss_Anon"] + kib["Pss_Shmem"]


VALIDATED_TRAINING = """
import sys
from tlpipe.data import load_dataset
from tlpipe.methods.supervised import train_classifier
from tlpipe.models import Classifier, ModelSpec
from tlpipe.tracking.progress import EpochLogger
from tlpipe.train import TrainConfig
if __name__ == "__main__":
    train, val = load_dataset(sys.argv[1])[0], load_dataset(sys.argv[2])[0]
    model = Classifier(ModelSpec("small-cnn", train.classes, train.images.shape[1])).train()
    train_classifier(model, train, TrainConfig(epochs=1, augment="photo"), log=EpochLogger("pretrain", 1, val))
"""


def peak_memory(process: subprocess.Popen) -> tuple[int, int]:
    """The peak (PSS, not file-backed) of a process and its children until it ends, sampled every 50 ms."""
    watched, peak = psutil.Process(process.pid), (0, 0)
    while process.poll() is None:
        try:
            use = [_memory(p.pid) for p in [watched, *watched.children(recursive=True)]]
        except (psutil.Error, OSError):  # a process ended while being read: this sample is incomplete
            continue
        peak = (max(peak[0], sum(u[0] for u in use)), max(peak[1], sum(u[1] for u in use)))
        time.sleep(0.05)
    return peak


def validation_peaks(work: Path, sizes: list[int], train_images: int = 1400) -> None:
    """Pretrain's epoch (streamed from the shards, 2 workers) with its per-epoch validation pass on source_val
    splits of each size, at 128 px: the peak memory of the process and its workers, in a child process each."""
    from tlpipe.data import save_dataset
    from tlpipe.data.spec import load_domain

    def split(n: int, seed: int) -> Path:
        make_folder(work / f"val-folder-{n}", n, seed=seed)
        save_dataset(work / f"val-{n}", load_domain(f"imagefolder:{work / f'val-folder-{n}'}", 128, seed=0))
        shutil.rmtree(work / f"val-folder-{n}")
        return work / f"val-{n}"

    train = split(train_images, seed=0)
    print(f"\n## Pretrain's epoch with validation ({train_images:,} training images streamed, 128 px, "
          "TLPIPE_RESIDENT_MB=64), MiB\n\n| validation images | PSS | not file-backed |\n|---:|---:|---:|")
    env = {**os.environ, "TLPIPE_RESIDENT_MB": "64"}
    for n in sizes:
        log = work / f"val-{n}.out"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-c", VALIDATED_TRAINING, str(train), str(split(n, seed=2))],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
            pss, unfiled = peak_memory(process)
        if process.returncode:
            sys.exit(f"the validated training epoch failed; its output is in {log}:\n{log.read_text()[-3000:]}")
        print(f"| {n:,} | {pss / 2**20:.0f} | {unfiled / 2**20:.0f} |", flush=True)
        shutil.rmtree(work / f"val-{n}")


def step_peaks(source: Path, target: Path, home: Path) -> tuple[float, dict[str, tuple[int, int]]]:
    """Wall time of `tlpipe run` on the two folders, and the peak memory of each step (its process and
    their children, sampled every 0.1 s) and of the runner itself, as (PSS, its part not backed by files)."""
    env = {**os.environ, "TLPIPE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [a for p in [f"source=imagefolder:{source}", f"target=imagefolder:{target}", *RUN_PARAMETERS]
            for a in ("-p", p)]
    log = home.parent / f"{home.name}.out"
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tlpipe.cli", "run", *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        runner, peaks = psutil.Process(process.pid), {}
        while process.poll() is None:
            try:
                use = {"(tlpipe run itself)": _memory(runner.pid)}
                task_of = {runner.pid: "(tlpipe run itself)"}
                for p in runner.children(recursive=True):  # parents come before their children
                    found = _TASK.search(" ".join(p.cmdline()))
                    task = task_of[p.pid] = found.group(1) if found else task_of.get(p.ppid(), "(tlpipe run itself)")
                    pss, unfiled = use.get(task, (0, 0))
                    mine = _memory(p.pid)
                    use[task] = (pss + mine[0], unfiled + mine[1])
            except (psutil.Error, OSError):  # a process ended while being read: this sample is incomplete
                continue
            for task, used in use.items():
                old = peaks.get(task, (0, 0))
                peaks[task] = (max(old[0], used[0]), max(old[1], used[1]))
            time.sleep(0.1)
    if process.returncode:
        sys.exit(f"tlpipe run failed; its output is in {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - started, peaks


def loader_rate(source_train: Path, workers: int, batches: int = 20, batch_size: int = 64) -> float:
    """Images per second the training loader delivers (decode + photo augmentation) from a sharded set."""
    from tlpipe.data import load_dataset, loader

    loader.RESIDENT_BYTES = 0
    data, _ = load_dataset(source_train)
    stream = loader.Batches(data, batch_size, seed=0, augment="photo", workers=workers)
    for _ in range(2):  # workers started, first batches in flight
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * batch_size / (time.perf_counter() - started)
    del stream  # its workers end here, not when a later fork's copy of it is collected
    gc.collect()
    return rate


def shard_reads(source_train: Path, reads: int = 5000) -> dict[str, float]:
    """Microseconds per image to read stored bytes from the shards (each checked against its SHA-256, not
    decoded), in storage order and in the random order training reads in, with the chunks in the page cache."""
    import numpy as np

    from tlpipe.data import load_dataset

    data, _ = load_dataset(source_train)
    images = data.images
    for i in range(len(images)):  # opened and cached: what is timed is the reads
        images.stored(i)
    n = min(reads, len(images))
    orders = {"storage order": np.arange(n), "random order": np.random.default_rng(0).permutation(len(images))[:n]}
    cost = {}
    for name, order in orders.items():
        started = time.perf_counter()
        for i in order:
            images.stored(int(i))
        cost[name] = (time.perf_counter() - started) / n * 1e6
    # What a DataLoader worker does: a random batch of 64, read in storage order.
    batches = [images.storage_order(orders["random order"][b : b + 64].tolist()) for b in range(0, n, 64)]
    started = time.perf_counter()
    for batch in batches:
        for i in batch:
            images.stored(int(i))
    cost["random order, by batch of 64"] = (time.perf_counter() - started) / n * 1e6
    return cost


def resnet18_rate(steps: int = 4, batch_size: int = 32) -> float:
    """Images per second of ResNet-18 training steps (forward, backward, SGD) at 224 px on this machine."""
    import torch
    import torch.nn.functional as F

    from tlpipe.models import Classifier, ModelSpec

    torch.manual_seed(0)
    model = Classifier(ModelSpec("resnet18", [str(i) for i in range(CLASSES)], SIZE)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (batch_size, SIZE, SIZE, 3), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (batch_size,))

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000", help="local folder sizes (comma-separated)")
    parser.add_argument("--s3", type=int, default=50000, help="folder size to ingest from the local S3 stack (0: none)")
    parser.add_argument("--loader", type=int, default=50000, help="the local size whose source_train the loader reads")
    parser.add_argument("--runs", default="2000,8000", help="folder sizes to run the whole pipeline on, each step's "
                        "peak memory measured (comma-separated; empty: none)")
    parser.add_argument("--validation", default="300,1200,4800,19200", help="source_val sizes for pretrain's "
                        "epoch with validation, its peak memory measured (comma-separated; empty: none)")
    parser.add_argument("--work", default="", help="working folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(args.work or tempfile.mkdtemp(prefix="tlpipe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# Scale benchmark\n\n{datetime.date.today()} · {platform.processor() or platform.machine()} · "
          f"{len(os.sched_getaffinity(0))} CPUs · {psutil.virtual_memory().total / 2**30:.0f} GiB · "
          f"Python {platform.python_version()}\n", flush=True)
    target = work / "target"
    make_folder(target, TARGET_IMAGES, seed=1)
    rows, loader_rows = [], []
    runs = [(n, "local") for n in sizes] + ([(args.s3, "s3")] if args.s3 else [])
    for n, where in runs:
        folder = work / f"source-{n}"
        folder_bytes = make_folder(folder, n, seed=0)
        out, home = work / f"out-{n}-{where}", work / f"home-{n}-{where}"
        if where == "s3":
            from tlpipe import stack, storage

            os.environ["TLPIPE_HOME"] = str(home)
            env = stack.up()
            os.environ.update(env)
            storage.upload(str(folder), f"s3://tlpipe/scale/{n}")
            shutil.rmtree(folder)
            seconds, peak = ingest(f"imagefolder:s3://tlpipe/scale/{n}", target, out, home, env)
            stack.down()
        else:
            seconds, peak = ingest(f"imagefolder:{folder}", target, out, home)
        artifact_bytes = size_of(out)
        images = n + TARGET_IMAGES
        rows.append(f"| {n:,} | {where} | {seconds:.0f} | {images / seconds:.0f} | {peak / 2**30:.2f} | "
                    f"{folder_bytes / 2**20:.0f} | {artifact_bytes / 2**20:.0f} | "
                    f"{artifact_bytes / (folder_bytes + size_of(target)):.2f} |")
        print(rows[-1], flush=True)
        if n == args.loader and where == "local":
            reads = shard_reads(out / "source_train")
            print(f"shard reads: {reads}", flush=True)
            for workers in (0, 1, 2):
                loader_rows.append((workers, loader_rate(out / "source_train", workers)))
                print(f"loader, {workers} workers: {loader_rows[-1][1]:.0f} images/s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    if rows:
        print("\n## Ingest (source: N photos at 224 px; target: 1,000)\n")
        print("| source images | from | seconds | images/s | peak RSS GiB | folder MiB | artifacts MiB | artifacts / folders |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
    if loader_rows:
        print(f"\n## Training loader on the {args.loader:,}-image source_train (decode + photo augmentation, batches of 64)\n")
        print("| reader | images/s |\n|---|---:|")
        for workers, rate in loader_rows:
            print(f"| loader, {workers} worker process{'es' if workers != 1 else ''} | {rate:.0f} |")
        print(f"| ResNet-18 training step at 224 px, batch 32 (this CPU) | {resnet18_rate():.1f} |")
        print("\n## Shard reads on the same source_train (stored bytes, SHA-256 checked, not decoded)\n")
        print("| order | µs per image |\n|---|---:|")
        for order, micros in reads.items():
            print(f"| {order} | {micros:.0f} |")
        for order in ("random order", "random order, by batch of 64"):
            print(f"| {order} / storage order | {reads[order] / reads['storage order']:.2f}x |")
    validation_sizes = [int(s) for s in args.validation.split(",") if s]
    if validation_sizes:
        validation_peaks(work, validation_sizes)
    run_sizes = [int(s) for s in args.runs.split(",") if s]
    if run_sizes:
        run_peaks(work, target, run_sizes)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def run_peaks(work: Path, target: Path, sizes: list[int]) -> None:
    measured = {}
    for n in sizes:
        folder = work / f"run-source-{n}"
        make_folder(folder, n, seed=0)
        measured[n] = step_peaks(folder, target, work / f"run-home-{n}")
        print(f"tlpipe run on {n:,} source photos: {measured[n][0]:.0f} s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work / f"run-home-{n}", ignore_errors=True)
    tasks = list(dict.fromkeys(t for _, peaks in measured.values() for t in peaks))
    print(f"\n## Whole run: each step's peak memory, MiB (tlpipe run, {', '.join(RUN_PARAMETERS)}; "
          f"target: {TARGET_IMAGES:,} photos; TLPIPE_RESIDENT_MB={os.environ.get('TLPIPE_RESIDENT_MB', '1024')})\n")
    print("PSS: all the step's pages, shared ones counted once; not file-backed: less the mapped files (shard "
          "chunks, libraries), which are page cache.\n")
    ratio = f"{sizes[-1] // sizes[0]}x images"
    print("| step | " + " | ".join(f"PSS, {n:,} photos" for n in sizes) + f" | {ratio} | "
          + " | ".join(f"not file-backed, {n:,}" for n in sizes) + f" | {ratio} |")
    print("|---|" + "---:|" * (2 * len(sizes) + 2))
    for task in tasks:
        cells = []
        for kind in (0, 1):
            values = [measured[n][1].get(task, (0, 0))[kind] for n in sizes]
            cells += [f"{v / 2**20:.0f}" for v in values] + [f"{values[-1] / values[0]:.2f}x" if values[0] else ""]
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("| wall seconds | " + " | ".join(f"{measured[n][0]:.0f}" for n in sizes) + " |" + " |" * (len(sizes) + 1))


if __name__ == "__main__":
    main()
