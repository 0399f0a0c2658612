"""Metrics, the comparison table, and the HTML report."""

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tlpipe.data import ImageSet
from tlpipe.analysis import figure_png, pyplot
from tlpipe.models import Classifier, predict


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


@dataclass
class Evaluation:
    results: list[Result]
    best: str
    classes: list[str]
    test_hash: str
    test_count: int
    unseen: list[str] = field(default_factory=list)
    # Multi-task models: per task, the multi-task model's accuracy next to a single-task model's.
    tasks: list[dict] = field(default_factory=list)

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


def compare(models: dict[str, tuple[Classifier, str]], test: ImageSet, best_of: str = "all",
            unseen: list[str] = ()) -> Evaluation:
    """Scores every model on the same test set; the best is the most accurate (first listed on ties),
    of all models or, with best_of="candidates", of the candidates only."""
    results = [score(model, test, name, role, unseen) for name, (model, role) in models.items()]
    eligible = [r for r in results if best_of == "all" or r.role == "candidate"]
    best = max(eligible, key=lambda r: r.accuracy).name
    return Evaluation(results, best, test.classes, test.content_hash(), len(test), list(unseen))


def task_accuracy(model: Classifier, test: ImageSet, task: str) -> float:
    """Accuracy of one task head of a multi-task model ("target" is its main head)."""
    head = model.head if task == "target" else model.tasks[task]
    return float((predict(model, test.images, head=head).numpy() == test.labels).mean())


def _has_distances(evaluation: Evaluation) -> bool:
    return any(r.a_distance is not None for r in evaluation.results)


def format_table(evaluation: Evaluation) -> str:
    zero_shot = bool(evaluation.unseen)
    distances = _has_distances(evaluation)
    extra = (f" {'A-dist':>7}" if distances else "") + (f" {'seen':>8} {'unseen':>8} {'unseen*':>8}" if zero_shot else "")
    lines = [f"{'model':<14} {'role':<10} {'accuracy':>8}{extra}", "-" * (34 + len(extra))]
    for r in evaluation.results:
        mark = "  <- best" if r.name == evaluation.best else ""
        cells = f" {r.a_distance:>7.2f}" if distances and r.a_distance is not None else (" " * 8 if distances else "")
        if zero_shot:
            cells += f" {r.seen_accuracy:>8.2%} {r.unseen_accuracy:>8.2%} {r.unseen_among_unseen:>8.2%}"
        lines.append(f"{r.name:<14} {r.role:<10} {r.accuracy:>8.2%}{cells}{mark}")
    lines.append(f"(target test split: {evaluation.test_count} images)")
    if distances:
        lines.append("A-dist: proxy A-distance between source and target test features (0: indistinguishable, 2: separable)")
    if zero_shot:
        lines.append(f"unseen classes {', '.join(evaluation.unseen)} (never in training): chance is "
                     f"{1 / len(evaluation.classes):.1%} over all classes, {1 / len(evaluation.unseen):.1%} among the "
                     "unseen (unseen*)")
    for t in evaluation.tasks:
        single = f"{t['single_task']:.2%} ({t['single_task_model']})" if t["single_task"] is not None else "n/a"
        lines.append(f"task {t['task']:<8} {t['model']}: multi-task {t['multi_task']:.2%}, single-task {single}")
    return "\n".join(lines)


def confusion_png(result: Result, classes: list[str]) -> bytes:
    plt = pyplot()
    matrix = np.asarray(result.confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 12 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result.name}: {result.accuracy:.1%}")
    for (i, j), v in np.ndenumerate(matrix):
        if v and len(classes) <= 12:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    return figure_png(fig, dpi=100)


def per_class_csv(evaluation: Evaluation) -> str:
    """Per-class accuracy of every model: a row per class, a column per model."""
    lines = ["class," + ",".join(r.name for r in evaluation.results)]
    lines += [c + "," + ",".join(f"{r.per_class[c]:.4f}" for r in evaluation.results) for c in evaluation.classes]
    return "\n".join(lines) + "\n"


def _extra_sections(evaluation: Evaluation) -> str:
    esc = html.escape
    parts = []
    if evaluation.unseen:
        rows = "".join(f"<tr><td>{esc(r.name)}</td><td>{r.seen_accuracy:.2%}</td><td>{r.unseen_accuracy:.2%}</td>"
                       f"<td>{r.unseen_among_unseen:.2%}</td></tr>" for r in evaluation.results)
        parts.append(f"<h2>Zero-shot: unseen classes {esc(', '.join(evaluation.unseen))}</h2>"
                     "<table><tr><th>model</th><th>seen classes</th><th>unseen, over all classes</th>"
                     f"<th>unseen, among unseen</th></tr>{rows}</table><p>Chance: {1 / len(evaluation.classes):.1%} "
                     f"over all classes, {1 / len(evaluation.unseen):.1%} among the unseen.</p>")
    if evaluation.tasks:
        rows = "".join(f"<tr><td>{esc(t['task'])}</td><td>{esc(t['model'])}</td><td>{t['multi_task']:.2%}</td>"
                       f"<td>{'' if t['single_task'] is None else format(t['single_task'], '.2%')}</td>"
                       f"<td>{esc(t['single_task_model'] or '')}</td></tr>" for t in evaluation.tasks)
        parts.append("<h2>Multi-task: each task against a single-task model</h2><table><tr><th>task</th>"
                     "<th>model</th><th>multi-task</th><th>single-task</th><th>single-task model</th></tr>"
                     f"{rows}</table>")
    return "".join(parts)


def write_report(path: str | Path, evaluation: Evaluation, title: str, facts: dict, tsne: bytes | None = None) -> None:
    """A self-contained HTML page: the table with per-class accuracy and A-distances, the best
    model's confusion matrix and, when given, the t-SNE picture (tlpipe.analysis.tsne_png)."""
    esc = html.escape
    distances = _has_distances(evaluation)
    head = ("<th>A-distance</th>" if distances else "") + "".join(f"<th>{esc(c)}</th>" for c in evaluation.classes)
    rows = []
    for r in evaluation.results:
        cells = (f"<td>{'' if r.a_distance is None else format(r.a_distance, '.2f')}</td>" if distances else "")
        cells += "".join(f"<td>{r.per_class[c]:.0%}</td>" for c in evaluation.classes)
        style = ' class="best"' if r.name == evaluation.best else ""
        rows.append(f"<tr{style}><td>{esc(r.name)}</td><td>{r.role}</td><td><b>{r.accuracy:.2%}</b></td>{cells}</tr>")
    distance_note = (" A-distance: the proxy A-distance between source and target test images in the model's "
                     "features, 2(1 - 2 err) of a linear domain classifier (0: indistinguishable, 2: separable)."
                     if distances else "")
    tsne_section = (f'<h2>Features before and after transfer (t-SNE)</h2><img alt="t-SNE of source and target features" '
                    f'src="data:image/png;base64,{base64.b64encode(tsne).decode()}">' if tsne else "")
    fact_rows = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in facts.items())
    best = evaluation.result(evaluation.best)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.best {{ background: #e6f4ea; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Accuracy on the target test split ({evaluation.test_count} images)</h2>
<table><tr><th>model</th><th>role</th><th>accuracy</th>{head}</tr>{''.join(rows)}</table>
<p>Best: <b>{esc(evaluation.best)}</b>. Per-class columns are the accuracy on each class.{distance_note}</p>
{_extra_sections(evaluation)}
<h2>Confusion matrix of {esc(best.name)}</h2>
<img alt="confusion matrix" src="data:image/png;base64,{base64.b64encode(confusion_png(best, evaluation.classes)).decode()}">
{tsne_section}
<h2>Run</h2><table>{fact_rows}</table>
</body></html>
"""
    Path(path).write_text(page)
