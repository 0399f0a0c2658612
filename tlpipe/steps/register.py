"""The register step: the selected model registered, and the champion alias moved only through the gate."""

import json
from pathlib import Path

import mlflow

from tlpipe import tracking
from tlpipe.data import load_dataset
from tlpipe.errors import TlpipeError
from tlpipe.evaluate import Evaluation
from tlpipe.models import load_model
from tlpipe.report import add_gate_section
from tlpipe.steps.common import publish, timed
from tlpipe.steps.evaluate import describe_run


@timed
def register(
    best_model: str,
    evaluation_path: str,
    target_test: str,
    model_name: str,
    experiment: str,
    pipeline_run: str,
    out: str,
    publish_to: str = "",
    gate_alpha: float = 0.05,
    gate_margin: float = 0.0,
    report_in: str = "",
    report_out: str = "",
    min_accuracy: float = 0.0,
):
    """Registers the selected model: it becomes the champion only if the paired test on the target test
    split shows it better, the challenger otherwise (tlpipe.registry); writes the evaluation report `report_in` with
    the gate's evidence to `report_out`."""
    from tlpipe.registry import LINEAGE_TAG, SPLIT_SEED_TAG, Gate
    from tlpipe.registry import register as register_version

    gate = Gate(gate_alpha, gate_margin, min_accuracy)
    evaluation = Evaluation.load(evaluation_path)
    test, meta = load_dataset(target_test)
    if meta["content_hash"] != evaluation.test_hash:
        raise TlpipeError("the evaluation and the target test split given to register do not match; rerun evaluate.")
    best = evaluation.result(evaluation.best)
    model_meta = load_model(best_model)[1]
    parent = tracking.current_parent(experiment, pipeline_run)
    pipeline_params = tracking.configure().get_run(parent).data.params
    facts = {  # one fact a tag, what a person reads first on the version's page, and what the gate compares
        tracking.PIPELINE_RUN_TAG: pipeline_run,
        "tlpipe.candidate": best.name,
        "tlpipe.method": model_meta.get("method", ""),
        "tlpipe.source": pipeline_params.get("source") or pipeline_params.get("source_model", ""),  # source-free: a model
        "tlpipe.target": pipeline_params.get("target", meta.get("spec", "")),
        "tlpipe.backbone": model_meta["spec"]["backbone"],
        "tlpipe.accuracy": f"{best.accuracy:.6f}",
        "tlpipe.test_hash": evaluation.test_hash,
        SPLIT_SEED_TAG: pipeline_params.get("seed", ""),
    }
    # The rest of the lineage in one JSON tag; the hyperparameters are on the version's source run.
    lineage = {"val_accuracy": best.val_accuracy, "selected_by": evaluation.selected_by,
               "trained_on": model_meta.get("trained_on", ""), "code_version": tracking.code_version(),
               "datasets": {k.removeprefix("tlpipe.hash."): v for k, v in tracking.dataset_hashes(experiment, pipeline_run).items()}}
    tags = {**{k: v for k, v in facts.items() if v != ""}, LINEAGE_TAG: json.dumps(lineage)}
    if publish_to:
        tags["tlpipe.published"] = publish(best_model, publish_to, pipeline_run, "model")
    params = {"model_name": model_name, "gate_alpha": gate_alpha, "gate_margin": gate_margin, "min_accuracy": min_accuracy}
    with tracking.step_run("register", experiment, pipeline_run, params, shared=params):
        client = tracking.configure()
        tracking.log_split(meta, target_test, "test")
        registration = register_version(client, best_model, model_name, test, tags, gate)
        # What a person reads first on the version's page, above its tags: what it is, on what data, how good.
        client.update_model_version(model_name, registration.version, description=(
            f"{best.name} ({model_meta.get('method', '')}), {facts['tlpipe.backbone']}, from {facts['tlpipe.source']} to "
            f"{facts['tlpipe.target']}, pipeline run {pipeline_run}: {best.accuracy:.2%} on {registration.test_images} "
            f"target test images (chance {registration.chance:.2%}). Gate: {registration.verdict}. Its parameters, "
            "data and training curves are on the source run."))
        mlflow.log_metrics({"accuracy": registration.accuracy})
        if registration.p_value is not None:
            mlflow.log_metric("gate_p_value", registration.p_value)
        verdict = {"tlpipe.registered_version": registration.version, "tlpipe.promoted": str(registration.promoted),
                   "tlpipe.gate.verdict": registration.verdict}
        mlflow.set_tags(verdict)
        tracking.log_to_parent(client, parent, metrics={"gate_p_value": registration.p_value},
                               tags={**verdict, "mlflow.note.content": describe_run(evaluation, registration)})
        if report_in:
            add_gate_section(report_in, report_out, registration)
            report = Path(report_out).read_text()
            mlflow.log_text(report, "report/report.html")
            client.log_text(parent, report, "report.html")
    registration.save(out)
    return registration
