"""The layer sweep's steps: one k of blocks copied (frozen and fine-tuned), and the sweep's report."""

import json
from pathlib import Path

import mlflow

from tlpipe import analysis, distributed, tracking
from tlpipe.data import load_dataset
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import score
from tlpipe.methods import finetune as finetuning
from tlpipe.models import load_model
from tlpipe.steps.common import checkpointed, config_params, png_image, timed, training_run
from tlpipe.train import TrainConfig


@timed
def layer_transfer(
    source_model: str,
    target_labelled: str,
    target_test: str,
    out: str,
    blocks: int,
    config: TrainConfig,
    experiment: str,
    pipeline_run: str,
) -> list[dict]:
    """One k of the layer sweep: the first `blocks` blocks copied from the source model, frozen (AnB)
    and, separately, fine-tuned (AnB+), the rest trained fresh on the labelled target images; both
    scored on the target test split."""
    model, _ = load_model(source_model)
    labelled, _ = load_dataset(target_labelled)
    test, _ = load_dataset(target_test)
    if not test.is_labelled or len(test) == 0:
        raise TlpipeError(f"target test split {target_test} is empty or unlabelled.")
    rows = []
    for mode, strategy in analysis.SWEEP_MODES.items():
        strategy = strategy.format(k=blocks)
        step_name = f"layers-{blocks}-{mode}"
        step_config = checkpointed(config, pipeline_run, step_name)
        with training_run(step_name, step_config, experiment, pipeline_run,
                          {"strategy": strategy, **config_params(step_config)}, None, []):
            tuned = distributed.run(step_config.nproc, finetuning.finetune, model, labelled, strategy, step_config,
                                    log=tracking.EpochLogger(step_name, step_config.epochs))
            rows.append({"blocks": blocks, "mode": mode, "strategy": strategy, "accuracy": score(tuned, test).accuracy})
            mlflow.log_metric("accuracy", rows[-1]["accuracy"])
    Path(out).write_text(json.dumps(rows))
    return rows


@timed
def layer_sweep_report(points: list[str], out: str, report_out: str, experiment: str, pipeline_run: str) -> list[dict]:
    """Gathers the sweep's points into one table and one plot (HTML report and MLflow artifacts)."""
    rows = sorted((row for p in points for row in json.loads(Path(p).read_text())), key=lambda r: (r["blocks"], r["mode"]))
    table = analysis.format_layer_sweep(rows)
    png = analysis.layer_sweep_png(rows, "layer transferability: target accuracy vs blocks copied")
    Path(out).write_text(json.dumps(rows, indent=2))
    Path(report_out).write_text(analysis.layer_sweep_html(table, png, pipeline_run))
    with tracking.step_run("layer-sweep", experiment, pipeline_run, {"points": len(rows)}):
        mlflow.log_text(table, "report/layer_sweep.txt")
        mlflow.log_text(json.dumps(rows, indent=2), "report/layer_sweep.json")
        mlflow.log_image(png_image(png), "report/layer_sweep.png")
        mlflow.log_text(Path(report_out).read_text(), "report/report.html")
    return rows
