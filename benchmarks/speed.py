"""Training throughput of tlpipe's loop against a bare hand-written PyTorch loop; prints a markdown table.

    .venv/bin/python benchmarks/speed.py [--repeats 3]

Same model (tlpipe's Classifier, preprocessing included), same uint8 data already on the device, same
batch size, SGD with momentum, bf16 autocast on CUDA. tlpipe's side is `train_classifier`, the loop that
pretrain and fine-tuning use (Batches, learning-rate annealing, per-step metrics kept on the device, one
host sync per epoch); the bare side is the minimal loop a person would write. Each side runs `epochs`
epochs and is timed on its last one; the sides alternate and the median of the repeats is kept.
Rows: small CNN and ResNet-18 on CPU; ResNet-50 at 224 px in bf16 when a GPU is present.
"""

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from tlpipe.data import ImageSet
from tlpipe.distributed import device
from tlpipe.methods.supervised import train_classifier
from tlpipe.models import Classifier, ModelSpec
from tlpipe.train import TrainConfig

CLASSES = [str(i) for i in range(10)]


def synchronize() -> None:
    if device().type == "cuda":
        torch.cuda.synchronize()


def make_data(size: int, n: int) -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n), CLASSES)


def new_model(backbone: str, size: int) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(ModelSpec(backbone, CLASSES, size)).train()
    if device().type == "cuda":
        model.to(device(), memory_format=torch.channels_last)
    return model.to(device())


def tlpipe_loop(backbone: str, data: ImageSet, batch: int, epochs: int) -> float:
    model = new_model(backbone, data.images.shape[1])
    final = train_classifier(model, data, TrainConfig(epochs=epochs, batch_size=batch, lr=0.01))
    return final["images_per_second"]


def bare_loop(backbone: str, data: ImageSet, batch: int, epochs: int) -> float:
    model = new_model(backbone, data.images.shape[1])
    images = torch.from_numpy(data.images).to(device())
    labels = torch.from_numpy(data.labels).to(device())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = len(images) // batch
    amp = device().type == "cuda"
    for _ in range(epochs):
        synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(images), device=device())
        for i in range(steps):
            index = order[i * batch : (i + 1) * batch]
            with torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize()
        seconds = time.perf_counter() - started
    return steps * batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [("small-cnn", 32, 64, 150, 2, "cpu"), ("resnet18", 32, 64, 30, 2, "cpu")]
    if torch.cuda.is_available():
        rows = [("small-cnn", 32, 256, 200, 3, "cuda"), ("resnet18", 32, 256, 100, 3, "cuda"),
                ("resnet50", 224, 64, 60, 3, "cuda")]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, "
          f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}")
    print()
    print("| model | input | batch | device | bare loop img/s | tlpipe img/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for backbone, size, batch, steps, epochs, where in rows:
        data = make_data(size, steps * batch)
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(backbone, data, batch, epochs))
            ours.append(tlpipe_loop(backbone, data, batch, epochs))
        b, t = statistics.median(bare), statistics.median(ours)
        precision = "bf16" if where == "cuda" else "fp32"
        print(f"| {backbone} | {size} px | {batch} | {where} {precision} | {b:,.0f} | {t:,.0f} | {t / b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
