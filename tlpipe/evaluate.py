"""Scoring the models of a pipeline run on the target splits and selecting one on validation."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tlpipe import selection
from tlpipe.data import ImageSet
from tlpipe.models import Classifier
from tlpipe.scoring import accuracy, predict


@dataclass
class Result:
    name: str
    role: str  # "baseline" or "candidate"
    accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]
    # With unseen classes (zero-shot): accuracy on seen-class images, on unseen-class images predicted
    # over all classes, and on unseen-class images predicted among the unseen classes only.
    seen_accuracy: float | None = None
    unseen_accuracy: float | None = None
    unseen_among_unseen: float | None = None
    # Proxy A-distance between the source and target test images in this model's features
    # (tlpipe.analysis): lower after a successful adaptation.
    a_distance: float | None = None
    val_accuracy: float | None = None  # on the target validation split, when there is one
    selection_score: float | None = None  # the value of the criterion the model was chosen by


@dataclass
class Evaluation:
    results: list[Result]
    best: str  # the selected model: the best by `selected_by`, never by test accuracy
    classes: list[str]
    test_hash: str
    test_count: int
    unseen: list[str] = field(default_factory=list)
    # Multi-task models: per task, the multi-task model's accuracy next to a single-task model's.
    tasks: list[dict] = field(default_factory=list)
    selected_by: str = "target-val"  # a key of tlpipe.selection.CRITERIA
    val_count: int = 0
    pretrained_weights: str = ""  # where every model's backbone started ("": random initialisation)
    # What guessing scores on the test split: always answering its most frequent class.
    chance: float = 0.0
    warnings: list[str] = field(default_factory=list)  # signs that no model learned the task (quality_warnings)

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Evaluation":
        raw = json.loads(Path(path).read_text())
        raw["results"] = [Result(**r) for r in raw["results"]]
        return cls(**raw)


def score(model: Classifier, test: ImageSet, name: str = "", role: str = "candidate", unseen: list[str] = ()) -> Result:
    predicted = predict(model, test.images).numpy()
    n = len(test.classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (test.labels, predicted), 1)
    totals = confusion.sum(1)
    per_class = {c: float(confusion[i, i] / totals[i]) if totals[i] else 0.0 for i, c in enumerate(test.classes)}
    result = Result(name, role, float((predicted == test.labels).mean()), per_class, confusion.tolist())
    if unseen:
        unseen_ids = [test.classes.index(c) for c in unseen]
        is_unseen = np.isin(test.labels, unseen_ids)
        correct = predicted == test.labels
        among = predict(model, test.images[is_unseen], among=unseen_ids).numpy()
        result.seen_accuracy = float(correct[~is_unseen].mean())
        result.unseen_accuracy = float(correct[is_unseen].mean())
        result.unseen_among_unseen = float((among == test.labels[is_unseen]).mean())
    return result


def compare(models: dict[str, tuple[Classifier, str]], test: ImageSet, best_of: str = "all", unseen: list[str] = (),
            val: ImageSet | None = None, select_by: str = "auto", source_val: ImageSet | None = None,
            target_unlabelled: ImageSet | None = None) -> Evaluation:
    """Scores every model on the target validation and test splits and selects one by `select_by`
    (tlpipe.selection; the first listed on ties), of all models or, with best_of="candidates", of the
    candidates only. The test split only reports: nothing is chosen by it."""
    val_count = len(val) if val is not None else 0
    criterion = selection.resolve(select_by, val_count)
    results = [score(model, test, name, role, unseen) for name, (model, role) in models.items()]
    val_accuracy = {name: score(model, val).accuracy for name, (model, _) in models.items()} if val_count else {}
    chosen_by = selection.scores(criterion, {name: model for name, (model, _) in models.items()}, val, source_val,
                                 target_unlabelled, val_accuracy)
    for r in results:
        r.val_accuracy, r.selection_score = val_accuracy.get(r.name), chosen_by[r.name]
    eligible = [r for r in results if best_of == "all" or r.role == "candidate"]
    best = max(eligible, key=lambda r: r.selection_score).name
    chance = chance_accuracy(test.labels)
    return Evaluation(results, best, test.classes, test.content_hash(), len(test), list(unseen), selected_by=criterion,
                      val_count=val_count, chance=chance, warnings=quality_warnings(results, best, test.classes, chance))


def chance_accuracy(labels: np.ndarray) -> float:
    """The accuracy of always answering the most frequent class: what a model that learned nothing scores."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


COLLAPSED = 0.95  # one class taking this share of a model's predictions: it answers (almost) one class


def quality_warnings(results: list[Result], best: str, classes: list[str], chance: float) -> list[str]:
    """Sentences for the signs that no model learned the task: every model tied alike, a model answering one
    class for (almost) every image, the selected model no better than chance."""
    warnings = []
    # Tied models with the same confusion matrix: alike to the last image count, as models that answer
    # regardless of the image are (two different models can tie on accuracy alone).
    if len(results) > 1 and all(r.confusion == results[0].confusion for r in results):
        warnings.append(f"every model scored the same {results[0].accuracy:.2%} on the target test split with the same "
                        "confusion matrix; they may all answer the same way whatever the image (train longer, check "
                        "the data and lr)")
    for r in results:
        predicted = np.asarray(r.confusion).sum(0)
        if predicted.sum() and predicted.max() >= COLLAPSED * predicted.sum():
            warnings.append(f"{r.name} answers '{classes[int(predicted.argmax())]}' for "
                            f"{predicted.max() / predicted.sum():.0%} of the target test images")
    selected = next(r for r in results if r.name == best)
    if selected.accuracy <= chance:
        warnings.append(f"the selected model {best} scores {selected.accuracy:.2%}, no better than chance "
                        f"({chance:.2%}: always answering the most frequent test class)")
    return warnings


def task_accuracy(model: Classifier, test: ImageSet, task: str) -> float:
    """Accuracy of one task head of a multi-task model ("target" is its main head)."""
    return accuracy(model, test, head=model.head if task == "target" else model.tasks[task])
