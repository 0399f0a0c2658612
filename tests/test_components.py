"""Each KFP component called through its python_func, chained on the built-in domains, tiny epochs."""

import json
from pathlib import Path

import pytest
from kfp import dsl

from components.adapt import adapt
from components.close_run import close_run
from components.evaluate import evaluate
from components.finetune import finetune
from components.ingest import ingest
from components.layers import layer_sweep_report, layer_transfer
from components.pretrain import pretrain
from components.register import register
from tlpipe.data import load_dataset
from tlpipe.models import load_model

from tlpipe.steps import SPLITS
TRAIN = dict(epochs=1, batch_size=64, lr=0.01, seed=0, checkpoint_root="", checkpoint_every=1, nproc=1, experiment="tests")


def artifact(kind, path: Path):
    return kind(uri=str(path))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Runs ingest -> pretrain -> finetune/target-only/adapt -> evaluate -> register once."""
    root = tmp_path_factory.mktemp("components")
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPIPE_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("TLPIPE_PIPELINE_RUN", "run-1")  # what tlpipe run or the pod's label sets
    a = {name: artifact(dsl.Dataset, root / name) for name in SPLITS}
    ingest.python_func(source="digits", target="digits-m", target_labels_per_class=5, target_val_per_class=10, seed=0,
                       image_size=32, data_version="",
                       experiment="tests", publish_to=str(root / "published"), unseen_classes="",
                       attributes="", **a)
    for name in ("source_model", "finetuned", "target_only", "adapted", "best_model"):
        a[name] = artifact(dsl.Model, root / name)
    pretrain.python_func(source_train=a["source_train"], backbone="small-cnn", pretrained_weights="",
                         source_augment="colour", model=a["source_model"], **TRAIN)
    finetune.python_func(source_model=a["source_model"], source_train=a["source_train"],
                         target_labelled=a["target_labelled"], strategy="freeze:1",
                         step_name="finetune", model=a["finetuned"], **TRAIN)
    finetune.python_func(source_model=a["source_model"], source_train=a["source_train"],
                         target_labelled=a["target_labelled"], strategy="scratch",
                         step_name="target-only", model=a["target_only"], **TRAIN)
    adapt.python_func(source_model=a["source_model"], source_train=a["source_train"],
                      target_unlabelled=a["target_unlabelled"], target_labelled=a["target_labelled"],
                      method="dann+finetune", finetune_epochs=1, source_augment="colour", model=a["adapted"], **TRAIN)
    a["evaluation"] = artifact(dsl.Artifact, root / "evaluation.json")
    a["report"] = artifact(dsl.HTML, root / "report.html")
    a["metrics"] = artifact(dsl.Metrics, root / "metrics")
    a["confusion"] = artifact(dsl.ClassificationMetrics, root / "confusion")
    evaluate.python_func(target_test=a["target_test"], target_val=a["target_val"], source_val=a["source_val"],
                         target_unlabelled=a["target_unlabelled"], select_by="auto", source_test=a["source_test"],
                         source_only=a["source_model"], target_only=a["target_only"],
                         finetuned=a["finetuned"], adapted=a["adapted"], experiment="tests",
                         evaluation=a["evaluation"], report=a["report"], metrics=a["metrics"],
                         confusion=a["confusion"], best_model=a["best_model"])
    a["registration"] = artifact(dsl.Artifact, root / "registration.json")
    a["final_report"] = artifact(dsl.HTML, root / "final-report.html")
    register.python_func(best_model=a["best_model"], evaluation=a["evaluation"], evaluation_report=a["report"],
                         target_test=a["target_test"], model_name="tests-model", experiment="tests",
                         publish_to=str(root / "published"), gate_alpha=0.05, gate_margin=0.0,
                         registration=a["registration"], report=a["final_report"])
    close_run.python_func(experiment="tests", status=dsl.PipelineTaskFinalStatus("SUCCEEDED", "run-1", "exit-handler-1",
                                                                                  None, None))
    yield a
    mp.undo()


def test_ingest_writes_seven_disjoint_splits_with_metadata(chain):
    counts = {name: chain[name].metadata["count"] for name in SPLITS}
    assert counts["source_train"] + counts["source_val"] + counts["source_test"] == 1797
    assert counts["target_labelled"] == 50 and counts["target_val"] == 100
    assert counts["target_labelled"] + counts["target_val"] + counts["target_unlabelled"] + counts["target_test"] == 1797
    assert chain["target_unlabelled"].metadata["labelled"] is False
    data, meta = load_dataset(chain["target_test"].path)
    assert meta["content_hash"] == chain["target_test"].metadata["content_hash"] and len(data) == counts["target_test"]


def test_training_components_write_loadable_models(chain):
    methods = {name: load_model(chain[name].path)[1]["method"] for name in ("source_model", "finetuned", "target_only", "adapted")}
    assert methods == {"source_model": "source-only", "finetuned": "finetune:freeze:1",
                       "target_only": "target-only", "adapted": "dann+finetune"}
    assert chain["adapted"].metadata["backbone"] == "small-cnn"


def test_evaluate_scores_every_model_and_copies_the_one_selected_on_validation(chain):
    evaluation = json.loads(Path(chain["evaluation"].path).read_text())
    names = [r["name"] for r in evaluation["results"]]
    assert names == ["source-only", "target-only", "finetuned", "adapted"]
    best = max(evaluation["results"], key=lambda r: r["val_accuracy"])  # the first on ties
    assert evaluation["best"] == best["name"] and evaluation["selected_by"] == "target-val"
    assert evaluation["val_count"] == chain["target_val"].metadata["count"] == 100
    assert chain["metrics"].metadata[f"{best['name']}_test_accuracy"] == best["accuracy"]
    assert chain["metrics"].metadata[f"{best['name']}_val_accuracy"] == best["val_accuracy"]
    assert chain["evaluation"].metadata["selected"] == best["name"]
    matrix = chain["confusion"].metadata["confusionMatrix"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == chain["target_test"].metadata["count"]
    assert load_model(chain["best_model"].path)[1]["method"] == load_model(chain[_path_key(best["name"])].path)[1]["method"]
    report = Path(chain["report"].path).read_text()
    assert "data:image/png;base64," in report and best["name"] in report
    # Proxy A-distances (source test vs target test) for every model, and the t-SNE picture.
    assert all(-2 <= r["a_distance"] <= 2 for r in evaluation["results"])
    assert "A-distance" in report and "t-SNE" in report


def test_evaluate_logs_analysis_artifacts_to_mlflow(chain):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("tests")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("tlpipe.step") == "evaluate")
    files = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/tsne.png", "report/per_class_accuracy.csv", "report/confusion"} <= files
    confusions = {f.path for f in client.list_artifacts(run.info.run_id, "report/confusion")}
    assert confusions == {f"report/confusion/{n}.png" for n in ("source-only", "target-only", "finetuned", "adapted")}
    assert {"source-only_a_distance", "adapted_a_distance"} <= set(run.data.metrics)


def test_layer_sweep_components_train_both_modes_and_plot(chain, tmp_path, monkeypatch):
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-sweep")
    train = {**TRAIN, "experiment": "tests-sweep"}
    points = []
    for k in (0, 2):
        point = artifact(dsl.Artifact, tmp_path / f"point-{k}")
        layer_transfer.python_func(source_model=chain["source_model"], target_labelled=chain["target_labelled"],
                                   target_test=chain["target_test"], blocks=k, point=point, **train)
        assert set(point.metadata) == {"blocks", "frozen", "fine-tuned"}
        points.append(point)
    sweep, report = artifact(dsl.Artifact, tmp_path / "sweep"), artifact(dsl.HTML, tmp_path / "report.html")
    layer_sweep_report.python_func(points=points, experiment="tests-sweep", sweep=sweep,
                                   report=report)
    rows = json.loads(Path(sweep.path).read_text())
    assert [(r["blocks"], r["mode"]) for r in rows] == [(0, "fine-tuned"), (0, "frozen"), (2, "fine-tuned"), (2, "frozen")]
    # With no block copied both modes are the same target-only training.
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    assert "data:image/png;base64," in Path(report.path).read_text()


def _path_key(name):
    return {"source-only": "source_model", "target-only": "target_only"}.get(name, name)


def test_register_makes_the_first_version_champion_and_tags_lineage(chain):
    from mlflow import MlflowClient

    meta = chain["registration"].metadata
    assert meta["version"] == "1" and meta["promoted"] is True
    report = Path(chain["final_report"].path).read_text()
    assert "<h2>Registry gate</h2>" in report and "promoted: the first champion" in report
    assert report.replace("<h2>Registry gate</h2>", "").count("<h2>") == Path(chain["report"].path).read_text().count("<h2>")
    client = MlflowClient()
    version = client.get_model_version_by_alias("tests-model", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    assert tags["tlpipe.pipeline_run"] == "run-1"
    assert tags["tlpipe.test_hash"] == chain["target_test"].metadata["content_hash"]
    for split in SPLITS:
        assert tags[f"tlpipe.hash.{split}"] == chain[split].metadata["content_hash"]
    assert json.loads(tags["tlpipe.params"])["finetune_epochs"] == "1"
    published = Path(tags["tlpipe.published"])
    assert published == Path(chain["target_test"].path).parent / "published" / "run-1" / "model"
    assert (published / "model.safetensors").is_file()
    assert (published.parent / "datasets" / "target_test" / "data.safetensors").is_file()
    assert tags["tlpipe.code_version"].startswith("0.1.0")


def test_one_parent_run_with_a_nested_run_per_step(chain):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tlpipe.role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    steps = {r.data.tags["tlpipe.step"]: r for r in runs if r.data.tags.get("tlpipe.role") == "step"}
    assert set(steps) == {"ingest", "pretrain", "finetune", "target-only", "adapt", "evaluate", "register"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in steps.values())
    history = client.get_metric_history(steps["pretrain"].info.run_id, "train_loss")
    assert [m.step for m in history] == [0]
    # source_augment reaches the training of the source images, and only there.
    assert steps["pretrain"].data.params["pretrain_augment"] == steps["adapt"].data.params["adapt_augment"] == "colour"
    assert steps["finetune"].data.params["finetune_augment"] == "none"


def test_user_errors_exit_with_one_sentence(tmp_path, capsys, tlpipe_home, monkeypatch):
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-x")
    outputs = {name: artifact(dsl.Dataset, tmp_path / name) for name in SPLITS}
    with pytest.raises(SystemExit) as exit_info:
        ingest.python_func(source="digits", target="digits-m", target_labels_per_class=500, target_val_per_class=10,
                           seed=0, image_size=32, data_version="",
                           experiment="tests", publish_to="", unseen_classes="", attributes="",
                           **outputs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target_labels_per_class=500" in err[0] and err[0].startswith("tlpipe: error:")
    assert not (tmp_path / "source_train").exists()
