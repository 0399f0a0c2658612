"""A training step's progress: per-epoch metrics to its MLflow run and a progress line on the terminal."""

import time

import mlflow

from tlpipe.tracking.runs import configure


class EpochLogger:
    """Per-epoch metrics (throughput included) to the step's MLflow run, and a progress bar line with
    rate and ETA about ten times per step. With a `validation` split (an ImageSet), each epoch's model
    is also scored on it (`val_accuracy`, next to `train_accuracy`), and where the method pseudo-labels
    (self-training logs the confidence its pseudo-labels must clear), so are the pseudo-labels it would
    give those images: the share that clears the epoch's mean threshold and their accuracy. Watched,
    never used to choose an epoch. Picklable: rank 0 of data-parallel training calls it too."""

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
            scores = {"val_accuracy": validation_accuracy(model, self.validation)}
            if "pseudo_label_threshold" in metrics:
                scores |= pseudo_label_quality(model, self.validation, metrics["pseudo_label_threshold"])
            metrics = {**metrics, **scores}
            logged |= scores
        if self.run_id:
            self._client = self._client or configure()
            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in logged.items()])
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs:
            bar = tqdm.format_meter(epoch + 1, self.epochs, time.time() - self.started, ncols=60, unit="epoch",
                                    initial=self.first)
            shown = "  ".join(f"img/s {v:.0f}" if k == "images_per_second" else f"{k} {v:.3f}" for k, v in metrics.items())
            print(f"[{self.step}] epoch {bar}  {shown}", flush=True)


def _keeping_modes(score):
    """`score(model, ...)` leaving each of the model's modules in the train or eval mode it was in (a
    frozen part of a fine-tuned network stays in eval mode)."""
    def scored(model, *args):
        modes = [(module, module.training) for module in model.modules()]
        try:
            return score(model, *args)
        finally:
            for module, training in modes:
                module.training = training

    return scored


@_keeping_modes
def pseudo_label_quality(model, data, threshold: float) -> dict[str, float]:
    """Of labelled `data`, the share whose top-class probability reaches `threshold` and the accuracy
    of those top classes (0 when none does)."""
    from tlpipe.scoring import probabilities

    confidence, predicted = probabilities(model, data.images).max(1)
    kept = (confidence >= threshold).numpy()
    right = predicted.numpy()[kept] == data.labels[kept]
    return {"val_pseudo_label_share": float(kept.mean()), "val_pseudo_label_accuracy": float(right.mean()) if kept.any() else 0.0}


@_keeping_modes
def validation_accuracy(model, data) -> float:
    """The accuracy of `model` on labelled `data`."""
    from tlpipe.scoring import accuracy

    return accuracy(model, data)
