"""Proxy A-distance, the t-SNE picture, per-class and confusion outputs, and the layer-sweep table."""

import numpy as np
from helpers import colour_set, trained_source

from tlpipe.analysis import (
    domain_distances,
    domain_features,
    domain_sample,
    format_layer_sweep,
    layer_sweep_png,
    proxy_a_distance,
    tsne_figure,
    tsne_png,
)
from tlpipe.evaluate import compare
from tlpipe.report import confusion_png, format_table, per_class_csv, write_report

PNG = b"\x89PNG"


def test_proxy_a_distance_is_near_zero_for_one_domain_and_two_for_separable_ones():
    rng = np.random.default_rng(0)
    same = proxy_a_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)))
    apart = proxy_a_distance(rng.normal(size=(400, 16)), rng.normal(5.0, 1.0, size=(400, 16)))
    halfway = proxy_a_distance(rng.normal(size=(400, 16)), rng.normal(0.4, 1.0, size=(400, 16)))
    assert abs(same) < 0.3
    assert apart > 1.9
    assert same < halfway < apart


def test_domain_distances_tell_a_shifted_target_from_the_source():
    model = trained_source()
    source, shifted = colour_set(seed=1), colour_set(seed=2, shift=120)
    distances = domain_distances(domain_features({"m": model}, source, shifted))
    assert distances["m"] > 1.0
    assert domain_distances(domain_features({"m": model}, source, colour_set(seed=3)))["m"] < distances["m"]


def test_the_domain_analysis_sees_a_seeded_sample_of_bounded_size():
    data = colour_set(n_per_class=40, seed=1)
    assert domain_sample(data, n=len(data)) is data
    sample = domain_sample(data, seed=0, n=50)
    assert len(sample) == 50 and np.isin(sample.ids, data.ids).all() and len(set(sample.ids.tolist())) == 50
    assert np.array_equal(domain_sample(data, seed=0, n=50).ids, sample.ids)
    assert not np.array_equal(domain_sample(data, seed=1, n=50).ids, sample.ids)


def test_report_and_table_carry_a_distances_per_class_and_the_tsne_picture(tmp_path):
    model = trained_source()
    source, target = colour_set(seed=1), colour_set(seed=2, shift=60)
    evaluation = compare({"source-only": (model, "baseline"), "adapted": (model, "candidate")}, target, val=target)
    for r, d in zip(evaluation.results, (1.5, 0.25)):
        r.a_distance = d
    tsne = tsne_png(domain_features({"source-only": model}, source, target), source.labels, target.labels,
                    {"source-only": 1.5})
    assert tsne.startswith(PNG) and confusion_png(evaluation.results[0], evaluation.classes).startswith(PNG)
    table = format_table(evaluation)
    assert "A-dist" in table and "1.50" in table and "0.25" in table
    csv = per_class_csv(evaluation).splitlines()
    assert csv[0] == "class,source-only,adapted" and [line.split(",")[0] for line in csv[1:]] == ["r", "g", "b"]
    write_report(tmp_path / "r.html", evaluation, "t", {}, tsne)
    page = (tmp_path / "r.html").read_text()
    assert "A-distance" in page and "t-SNE" in page and page.count("data:image/png;base64,") == 2
    assert "Every model starts from random weights; target-only is trained on the target labels alone." in page


def test_table_and_report_say_target_only_started_from_the_pretrained_weights(tmp_path):
    model = trained_source()
    evaluation = compare({"source-only": (model, "baseline"), "target-only": (model, "baseline")}, colour_set(seed=2),
                         val=colour_set(seed=3))
    evaluation.pretrained_weights = "ResNet50_Weights.IMAGENET1K_V2"
    note = "starts from ResNet50_Weights.IMAGENET1K_V2; target-only is those weights with a new head"
    assert f"every model {note}" in format_table(evaluation)
    write_report(tmp_path / "r.html", evaluation, "t", {})
    assert f"Every model {note}" in (tmp_path / "r.html").read_text()


def test_tsne_has_a_panel_per_model_and_a_legend_of_domains_and_classes():
    model = trained_source()
    source, target = colour_set(seed=1), colour_set(seed=2, shift=60)
    pairs = domain_features({"source-only": model, "target-only": model, "adapted": model, "finetuned": model},
                            source, target)
    fig = tsne_figure(pairs, source.labels, target.labels, None, source.classes, "digits", "digits-m")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["source-only", "target-only", "adapted", "finetuned"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["source: digits", "target: digits-m", "r", "g", "b"]
    # Source and target differ in marker, not only in colour.
    source_marker, target_marker = (h.get_marker() for h in legend.legend_handles[:2])
    assert source_marker != target_marker


def test_layer_sweep_table_and_plot():
    rows = [{"blocks": k, "mode": m, "accuracy": a} for k, m, a in
            [(0, "frozen", 0.5), (0, "fine-tuned", 0.5), (2, "frozen", 0.6), (2, "fine-tuned", 0.7)]]
    table = format_layer_sweep(rows).splitlines()
    assert table[2].split() == ["0", "50.00%", "50.00%"] and table[3].split() == ["2", "60.00%", "70.00%"]
    assert layer_sweep_png(rows, "t").startswith(PNG)


def test_small_test_splits_get_a_smaller_perplexity_or_are_skipped_with_a_reason():
    from tlpipe.analysis import MIN_PER_DOMAIN, too_small, tsne_png

    rng = np.random.default_rng(0)
    n = MIN_PER_DOMAIN  # 20 points in all: below t-SNE's default perplexity of 30
    pairs = {"m": (rng.normal(size=(n, 8)), rng.normal(1.0, 1.0, size=(n, 8)))}
    png = tsne_png(pairs, np.arange(n) % 3, np.arange(n) % 3, {"m": 0.5}, ["a", "b", "c"])
    assert png.startswith(b"\x89PNG")
    assert too_small(n, n) == ""
    assert too_small(22, 1) == ("skipped: 22 source and 1 target test images, and the A-distance and t-SNE need at "
                                f"least {MIN_PER_DOMAIN} in each")
