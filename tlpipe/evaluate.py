"""Metrics, the comparison table, and the HTML report."""

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tlpipe.data import ImageSet
from tlpipe.models import Classifier, predict


@dataclass
class Result:
    name: str
    role: str  # "baseline" or "candidate"
    accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]


@dataclass
class Evaluation:
    results: list[Result]
    best: str
    classes: list[str]
    test_hash: str
    test_count: int

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Evaluation":
        raw = json.loads(Path(path).read_text())
        raw["results"] = [Result(**r) for r in raw["results"]]
        return cls(**raw)


def score(model: Classifier, test: ImageSet, name: str = "", role: str = "candidate") -> Result:
    predicted = predict(model, test.images).numpy()
    n = len(test.classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (test.labels, predicted), 1)
    totals = confusion.sum(1)
    per_class = {c: float(confusion[i, i] / totals[i]) if totals[i] else 0.0 for i, c in enumerate(test.classes)}
    return Result(name, role, float((predicted == test.labels).mean()), per_class, confusion.tolist())


def compare(models: dict[str, tuple[Classifier, str]], test: ImageSet, best_of: str = "all") -> Evaluation:
    """Scores every model on the same test set; the best is the most accurate (first listed on ties),
    of all models or, with best_of="candidates", of the candidates only."""
    results = [score(model, test, name, role) for name, (model, role) in models.items()]
    eligible = [r for r in results if best_of == "all" or r.role == "candidate"]
    best = max(eligible, key=lambda r: r.accuracy).name
    return Evaluation(results, best, test.classes, test.content_hash(), len(test))


def format_table(evaluation: Evaluation) -> str:
    lines = [f"{'model':<14} {'role':<10} {'accuracy':>8}", "-" * 34]
    for r in evaluation.results:
        mark = "  <- best" if r.name == evaluation.best else ""
        lines.append(f"{r.name:<14} {r.role:<10} {r.accuracy:>8.2%}{mark}")
    lines.append(f"(target test split: {evaluation.test_count} images)")
    return "\n".join(lines)


def _confusion_png(result: Result, classes: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(path: str | Path, evaluation: Evaluation, title: str, facts: dict) -> None:
    """A self-contained HTML page: the table, per-class accuracy, the best model's confusion matrix."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in evaluation.classes)
    rows = []
    for r in evaluation.results:
        cells = "".join(f"<td>{r.per_class[c]:.0%}</td>" for c in evaluation.classes)
        style = ' class="best"' if r.name == evaluation.best else ""
        rows.append(f"<tr{style}><td>{esc(r.name)}</td><td>{r.role}</td><td><b>{r.accuracy:.2%}</b></td>{cells}</tr>")
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
<p>Best: <b>{esc(evaluation.best)}</b>. Per-class columns are the accuracy on each class.</p>
<h2>Confusion matrix of {esc(best.name)}</h2>
<img alt="confusion matrix" src="data:image/png;base64,{_confusion_png(best, evaluation.classes)}">
<h2>Run</h2><table>{fact_rows}</table>
</body></html>
"""
    Path(path).write_text(page)
