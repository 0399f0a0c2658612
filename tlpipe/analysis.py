"""Analysis of transfer: how far apart the source and target domains are in a model's features
(the proxy A-distance of Ben-David et al. 2007, as used in the DANN paper, and a t-SNE picture), and
the layer-transferability sweep's table and plot."""

import base64
import html
import io

import numpy as np
import torch

from tlpipe.data import ImageSet
from tlpipe.models import Classifier
from tlpipe.scoring import scoring_batches

# Images per domain whose features the A-distance uses: a seeded sample, so that its cost (features and a
# logistic regression) stays the same however large the test splits grow.
MAX_A_DISTANCE = 2000
MAX_PER_DOMAIN = 500  # of those, per domain, in the t-SNE plot (t-SNE is quadratic in the points)
# Half of scikit-learn's 1000: on 800 points of digits features the final KL divergence was 0.634 against
# 0.623 at 1000, at half the cost (the evaluate step's largest).
TSNE_ITERATIONS = 500
# Below this many test images in a domain, a domain classifier's error and a t-SNE map say nothing.
MIN_PER_DOMAIN = 10


def too_small(source_count: int, target_count: int) -> str:
    """Why the domain analysis is skipped for test splits of these sizes, or "" when it is not."""
    if min(source_count, target_count) >= MIN_PER_DOMAIN:
        return ""
    return (f"skipped: {source_count} source and {target_count} target test images, and the A-distance and t-SNE "
            f"need at least {MIN_PER_DOMAIN} in each")


@torch.inference_mode()
def features(model: Classifier, images: np.ndarray) -> np.ndarray:
    model.eval()
    return torch.cat([model.features(batch).float().cpu() for batch in scoring_batches(model, images)]).numpy()


def domain_sample(data: ImageSet, seed: int = 0, n: int = MAX_A_DISTANCE) -> ImageSet:
    """At most n images of `data`, drawn with `seed` (in their stored order): what the domain analysis sees."""
    if len(data) <= n:
        return data
    return data.subset(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False)))


def _balanced(n_source: int, n_target: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = min(n_source, n_target)
    return np.sort(rng.choice(n_source, n, replace=False)), np.sort(rng.choice(n_target, n, replace=False))


def proxy_a_distance(source_features: np.ndarray, target_features: np.ndarray, seed: int = 0) -> float:
    """2 (1 - 2 err) of a linear source-vs-target classifier trained on half of an equal number of
    images from each domain and tested on the other half: about 0 when the domains are
    indistinguishable, 2 when they are perfectly separable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s, t = _balanced(len(source_features), len(target_features), seed)
    x = np.concatenate([source_features[s], target_features[t]])
    y = np.concatenate([np.ones(len(s)), np.zeros(len(t))])
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    error = 1.0 - classifier.fit(x_train, y_train).score(x_test, y_test)
    return float(2.0 * (1.0 - 2.0 * error))


def domain_features(models: dict[str, Classifier], source: ImageSet,
                    target: ImageSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each model's features of the source and the target images (give domain_sample's), computed once
    for the A-distance and the t-SNE picture."""
    return {name: (features(model, source.images), features(model, target.images)) for name, model in models.items()}


def domain_distances(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Each model's proxy A-distance between its source and target features (from domain_features)."""
    return {name: proxy_a_distance(source, target) for name, (source, target) in pairs.items()}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (steps run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()


def tsne_png(*args, **kwargs) -> bytes:
    """tsne_figure as a PNG."""
    return figure_png(tsne_figure(*args, **kwargs), dpi=90)


def tsne_figure(pairs: dict[str, tuple[np.ndarray, np.ndarray]], source_labels: np.ndarray, target_labels: np.ndarray,
                distances: dict[str, float] | None = None, classes: list[str] | None = None, source_name: str = "source",
                target_name: str = "target", seed: int = 0):
    """One t-SNE panel per model (pairs from domain_features), three to a row: source features as
    small filled circles, target features as larger outlined triangles, coloured by class, with a legend
    of both. After a good adaptation the target triangles sit in the source's class clusters."""
    from matplotlib.lines import Line2D
    from sklearn.manifold import TSNE

    plt = pyplot()
    rng = np.random.default_rng(seed)
    s = np.sort(rng.choice(len(source_labels), min(len(source_labels), MAX_PER_DOMAIN), replace=False))
    t = np.sort(rng.choice(len(target_labels), min(len(target_labels), MAX_PER_DOMAIN), replace=False))
    n_classes = int(max(source_labels.max(), target_labels.max())) + 1
    classes = classes or [str(i) for i in range(n_classes)]
    colours = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    columns = 2 if len(pairs) == 4 else min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    legend_rows = -(-(2 + len(classes)) // 6)
    legend_height = 0.35 + 0.25 * legend_rows  # inches, above the panels
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows + legend_height), squeeze=False)
    for ax in axes.flat[len(pairs):]:
        ax.set_visible(False)
    for ax, (name, (source, target)) in zip(axes.flat, pairs.items()):
        points = np.concatenate([source[s], target[t]])
        # t-SNE needs fewer neighbours than points: a small split gets a proportionally smaller perplexity.
        perplexity = min(30.0, (len(points) - 1) / 3)
        embedded = TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=TSNE_ITERATIONS,
                        random_state=seed).fit_transform(points)
        ax.scatter(*embedded[: len(s)].T, c=colours(source_labels[s] % colours.N), marker="o", s=10, alpha=0.5,
                   linewidths=0)
        ax.scatter(*embedded[len(s) :].T, c=colours(target_labels[t] % colours.N), marker="^", s=26, alpha=0.9,
                   edgecolors="black", linewidths=0.5)
        title = name if not distances or name not in distances else f"{name}  (A-distance {distances[name]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    domains = [Line2D([], [], marker="o", linestyle="", color="grey", markersize=5, label=f"source: {source_name}"),
               Line2D([], [], marker="^", linestyle="", color="grey", markeredgecolor="black", markersize=7,
                      label=f"target: {target_name}")]
    labels = [Line2D([], [], marker="s", linestyle="", color=colours(i % colours.N), markersize=7, label=c)
              for i, c in enumerate(classes)]
    fig.legend(handles=domains + labels, loc="upper center", ncol=6, fontsize=9, frameon=False, columnspacing=1.2)
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_height / (4.0 * rows + legend_height)))
    return fig


# The transferability study (Yosinski et al. 2014): target accuracy against the number of blocks copied.
SWEEP_MODES = {"frozen": "copy:{k}", "fine-tuned": "copy+:{k}"}  # AnB and AnB+, as fine-tuning strategies


def format_layer_sweep(rows: list[dict]) -> str:
    """rows: {"blocks": k, "mode": "frozen" | "fine-tuned", "accuracy": a}; a table with a row per k."""
    table = {(r["blocks"], r["mode"]): r["accuracy"] for r in rows}
    lines = [f"{'blocks copied':>13} {'frozen (AnB)':>13} {'fine-tuned (AnB+)':>18}", "-" * 46]
    for k in sorted({r["blocks"] for r in rows}):
        cells = [f"{table[(k, m)]:.2%}" if (k, m) in table else "-" for m in SWEEP_MODES]
        lines.append(f"{k:>13} {cells[0]:>13} {cells[1]:>18}")
    return "\n".join(lines)


def layer_sweep_png(rows: list[dict], title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for mode, style in zip(SWEEP_MODES, ("o-", "s--")):
        points = sorted((r["blocks"], r["accuracy"]) for r in rows if r["mode"] == mode)
        if points:
            ax.plot(*zip(*points), style, label=f"first k blocks copied, {mode}")
    ax.set_xlabel("k: blocks copied from the source model")
    ax.set_ylabel("target test accuracy")
    ax.set_xticks(sorted({r["blocks"] for r in rows}))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig, dpi=100)


def layer_sweep_html(table: str, png: bytes, pipeline_run: str) -> str:
    """The sweep's self-contained HTML report: what was measured, the plot and the table."""
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tlpipe layer sweep</title></head>"
        "<body style=\"font-family: system-ui, sans-serif; margin: 2em\"><h1>tlpipe layer sweep</h1>"
        f"<p>Pipeline run {html.escape(pipeline_run)}. Frozen: the first k blocks copied from the source model and "
        "kept fixed, the rest trained fresh on the labelled target images (AnB of Yosinski et al. 2014); "
        "fine-tuned: the same copy, then every block trained (AnB+). k = 0 is target-only.</p>"
        f"<img alt=\"target accuracy against k\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
        f"<pre>{html.escape(table)}</pre></body></html>\n")
