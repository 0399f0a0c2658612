"""A training step's progress: per-epoch metrics to its MLflow run and a progress line on the terminal."""

import time

import mlflow

from tlpipe.tracking.runs import configure


class EpochLogger:
    """Per-epoch metrics (throughput included) to the step's MLflow run, and a progress bar line with
    rate and ETA about ten times per step. With a `validation` split (an ImageSet), each epoch's model
    is also scored on it (`val_accuracy`, next to `train_accuracy`): watched, never used to choose an
    epoch. Picklable: rank 0 of data-parallel training calls it too."""

    def __init__(self, step: str, epochs: int, validation=None):
        self.step, self.epochs, self.validation = step, epochs, validation
        self.every = max(1, epochs // 10)
        active = mlflow.active_run()
        self.run_id = active.info.run_id if active else None
        self.started, self.first = time.time(), None
        self._client = None  # made on first use, in the process that trains

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __call__(self, epoch: int, metrics: dict[str, float], model=None) -> None:
        from mlflow.entities import Metric
        from tqdm import tqdm

        if self.first is None:  # the first epoch this process trains: later than 0 after a resume
            self.first = epoch
        logged = {f"train_{k}": v for k, v in metrics.items()}
        if self.validation is not None and len(self.validation) and model is not None:
            metrics = {**metrics, "val_accuracy": validation_accuracy(model, self.validation)}
            logged["val_accuracy"] = metrics["val_accuracy"]
        if self.run_id:
            self._client = self._client or configure()
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in logged.items()])
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            bar = tqdm.format_meter(epoch + 1, self.epochs, time.time() - self.started, ncols=60, unit="epoch",
                                    initial=self.first)
            shown = "  ".join(f"img/s {v:.0f}" if k == "images_per_second" else f"{k} {v:.3f}" for k, v in metrics.items())
            print(f"[{self.step}] epoch {bar}  {shown}", flush=True)


def validation_accuracy(model, data) -> float:
    """The accuracy of `model` on `data`, leaving each of its modules in the train or eval mode it was
    in (a frozen part of a fine-tuned network stays in eval mode)."""
    from tlpipe.scoring import accuracy

    modes = [(module, module.training) for module in model.modules()]
    try:
        return accuracy(model, data)
    finally:
        for module, training in modes:
            module.training = training
