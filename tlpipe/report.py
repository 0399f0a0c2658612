"""What an evaluation looks like to a person: the table, the notes on selection and start, confusion
matrices, per-class accuracy, and the HTML report (with the gate's section that register adds)."""

import base64
import html
import re
from pathlib import Path

import numpy as np

from tlpipe import selection
from tlpipe.analysis import figure_png, pyplot
from tlpipe.evaluate import Evaluation, Result


def _has_distances(evaluation: Evaluation) -> bool:
    return any(r.a_distance is not None for r in evaluation.results)


SCORE_COLUMNS = {"source-val": "src val", "im": "IM", "snd": "SND"}


def format_table(evaluation: Evaluation) -> str:
    zero_shot = bool(evaluation.unseen)
    distances = _has_distances(evaluation)
    criterion = SCORE_COLUMNS.get(evaluation.selected_by)
    header = f"{'model':<14} {'role':<10} {'val acc':>8} {'test acc':>8}" + (f" {criterion:>8}" if criterion else "")
    header += (f" {'A-dist':>7}" if distances else "") + (f" {'seen':>8} {'unseen':>8} {'unseen*':>8}" if zero_shot else "")
    lines = [header, "-" * (len(header) + 13)]
    for r in evaluation.results:
        mark = "  <- selected" if r.name == evaluation.best else ""
        val = f"{r.val_accuracy:>8.2%}" if r.val_accuracy is not None else f"{'n/a':>8}"
        cells = f" {r.selection_score:>8.3f}" if criterion else ""
        cells += (f" {r.a_distance:>7.2f}" if r.a_distance is not None else " " * 8) if distances else ""
        if zero_shot:
            cells += f" {r.seen_accuracy:>8.2%} {r.unseen_accuracy:>8.2%} {r.unseen_among_unseen:>8.2%}"
        lines.append(f"{r.name:<14} {r.role:<10} {val} {r.accuracy:>8.2%}{cells}{mark}")
    lines.append(f"selected by {selection_note(evaluation)}; test acc: target test split, "
                 f"{evaluation.test_count} images, reported only; chance {evaluation.chance:.2%} (always the most "
                 "frequent test class)")
    lines += [f"warning: {w}" for w in evaluation.warnings]
    lines.append(start_note(evaluation))
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


def start_note(evaluation: Evaluation, sentence: bool = False) -> str:
    """Where the models started, so that a reader knows what the target-only baseline already had."""
    if evaluation.pretrained_weights:
        note = (f"every model starts from {evaluation.pretrained_weights}; target-only is those weights with a new head, "
                "trained on the target labels (no source images)")
    else:
        note = "every model starts from random weights; target-only is trained on the target labels alone"
    return f"{note[0].upper()}{note[1:]}." if sentence else note


def selection_note(evaluation: Evaluation) -> str:
    """Which criterion chose the model, and on what data."""
    what = selection.CRITERIA[evaluation.selected_by]
    if evaluation.selected_by == "target-val":
        return f"{what} ({evaluation.val_count} images)"
    return what


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
                     "<div class=\"scroll\"><table><tr><th>model</th><th>seen classes</th><th>unseen, over all classes</th>"
                     f"<th>unseen, among unseen</th></tr>{rows}</table></div><p>Chance: {1 / len(evaluation.classes):.1%} "
                     f"over all classes, {1 / len(evaluation.unseen):.1%} among the unseen.</p>")
    if evaluation.tasks:
        rows = "".join(f"<tr><td>{esc(t['task'])}</td><td>{esc(t['model'])}</td><td>{t['multi_task']:.2%}</td>"
                       f"<td>{'' if t['single_task'] is None else format(t['single_task'], '.2%')}</td>"
                       f"<td>{esc(t['single_task_model'] or '')}</td></tr>" for t in evaluation.tasks)
        parts.append("<h2>Multi-task: each task against a single-task model</h2><div class=\"scroll\"><table><tr><th>task</th>"
                     "<th>model</th><th>multi-task</th><th>single-task</th><th>single-task model</th></tr>"
                     f"{rows}</table></div>")
    return "".join(parts)


GATE_MARK = "<!-- registry gate -->"  # where register adds its section


def write_report(path: str | Path, evaluation: Evaluation, title: str, facts: dict, tsne: bytes | None = None) -> None:
    """A self-contained HTML page that reads in a narrow pane: what ran (`facts`), the accuracy table,
    per-class accuracy, the selected model's confusion matrix and, when given, the t-SNE picture
    (tlpipe.analysis.tsne_png). Wide tables scroll inside their box; pictures shrink to the page."""
    esc = html.escape
    distances = _has_distances(evaluation)
    criterion = SCORE_COLUMNS.get(evaluation.selected_by)
    head = (f"<th>{criterion}</th>" if criterion else "") + ("<th>A-distance</th>" if distances else "")
    rows, class_rows = [], []
    for r in evaluation.results:
        val = "n/a" if r.val_accuracy is None else f"{r.val_accuracy:.2%}"
        cells = f"<td>{r.selection_score:.3f}</td>" if criterion else ""
        cells += (f"<td>{'' if r.a_distance is None else format(r.a_distance, '.2f')}</td>" if distances else "")
        style = ' class="best"' if r.name == evaluation.best else ""
        rows.append(f"<tr{style}><td>{esc(r.name)}</td><td>{r.role}</td><td>{val}</td><td><b>{r.accuracy:.2%}</b></td>"
                    f"{cells}</tr>")
        class_rows.append(f"<tr{style}><td>{esc(r.name)}</td>"
                          + "".join(f"<td>{r.per_class[c]:.0%}</td>" for c in evaluation.classes) + "</tr>")
    class_head = "".join(f"<th>{esc(c)}</th>" for c in evaluation.classes)
    distance_note = (" A-distance: the proxy A-distance between source and target test images in the model's "
                     "features, 2(1 - 2 err) of a linear domain classifier (0: indistinguishable, 2: separable)."
                     if distances else "")
    tsne_section = (f'<h2>Features by model (t-SNE)</h2><img alt="t-SNE of source and target test features" '
                    f'src="data:image/png;base64,{base64.b64encode(tsne).decode()}">' if tsne else "")
    fact_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{_linked(str(v))}</td></tr>" for k, v in facts.items())
    best = evaluation.result(evaluation.best)
    warning_list = ('<p class="warning"><b>Warning:</b> ' + "; ".join(esc(w) for w in evaluation.warnings) + ".</p>"
                    if evaluation.warnings else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1em auto; padding: 0 1em; max-width: 75em; line-height: 1.4; }}
h1 {{ font-size: 1.4em; overflow-wrap: anywhere; }}
h2 {{ font-size: 1.15em; margin-top: 1.5em; }}
.scroll {{ overflow-x: auto; max-width: 100%; margin-bottom: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }}
td:first-child, th:first-child {{ text-align: left; }}
table.facts td {{ text-align: left; white-space: normal; overflow-wrap: anywhere; }}
table.facts th {{ background: #f4f4f4; }}
tr.best {{ background: #e6f4ea; }}
p.warning {{ background: #fdecea; padding: 0.4em 0.7em; }}
img {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{esc(title)}</h1>
<div class="scroll"><table class="facts">{fact_rows}</table></div>
<h2>Accuracy: target validation and test splits</h2>
<div class="scroll"><table><tr><th>model</th><th>role</th><th>validation</th><th>test ({evaluation.test_count} images)</th>{head}</tr>{''.join(rows)}</table></div>
<p>Selected: <b>{esc(evaluation.best)}</b>, by {esc(selection_note(evaluation))}. The test split only reports: no
model or epoch was chosen by it. Chance is {evaluation.chance:.2%} (always answering the most frequent test
class).{distance_note} {esc(start_note(evaluation, sentence=True))}</p>
{warning_list}
{GATE_MARK}
<h2>Test accuracy per class</h2>
<div class="scroll"><table><tr><th>model</th>{class_head}</tr>{''.join(class_rows)}</table></div>
{_extra_sections(evaluation)}
<h2>Confusion matrix of {esc(best.name)}</h2>
<img alt="confusion matrix" src="data:image/png;base64,{base64.b64encode(confusion_png(best, evaluation.classes)).decode()}">
{tsne_section}
</body></html>
"""
    Path(path).write_text(page)


def _linked(text: str) -> str:
    """Escaped text, with an http(s) address in parentheses made a link."""
    found = re.search(r"\((https?://[^)\s]+)\)", text)
    if not found:
        return html.escape(text)
    url = found.group(1)
    return (html.escape(text[: found.start()]) + f'(<a href="{html.escape(url)}">{html.escape(url)}</a>)'
            + html.escape(text[found.end():]))


def add_gate_section(report_in: str | Path, report_out: str | Path, registration) -> None:
    """Copies the evaluation report with the registry gate's evidence and verdict added
    (`registration`: a tlpipe.registry.Registration)."""
    esc = html.escape
    r = registration
    rows = [("registered", f"{r.model_name} version {r.version} (alias {r.alias})"),
            ("test accuracy", f"{r.accuracy:.2%} on {r.test_images} target test images")]
    if r.chance is not None:
        rows.append(("chance", f"{r.chance:.2%} (always answering the most frequent test class)"))
    if r.p_value is not None:
        rows += [(f"champion v{r.previous_champion}", f"{r.previous_champion_accuracy:.2%} on the same images"),
                 ("only the new version right", str(r.challenger_only)),
                 (f"only v{r.previous_champion} right", str(r.champion_only)),
                 ("one-sided exact McNemar p", f"{r.p_value:.3g}")]
    rows.append(("verdict", r.verdict))
    table = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    section = (f'<h2>Registry gate</h2><div class="scroll"><table class="facts">{table}</table></div><p>The champion moves only when the paired test on the '
               "images where the two models disagree shows the new version better.</p>\n")
    page = Path(report_in).read_text()
    Path(report_out).write_text(page.replace(GATE_MARK, section, 1))
