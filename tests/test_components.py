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
from tlpipe.steps.common import SPLITS

pytestmark = pytest.mark.slow  # the component tier: every component of the DAG run in a chain

TRAIN = dict(epochs=1, batch_size=64, lr=0.01, seed=0, checkpoint_root="", checkpoint_every=1, nproc=1, experiment="tests")


def artifact(kind, path: Path):
    return kind(uri=str(path))


def transfer(root: Path, experiment: str = "tests", ingest_args: dict | None = None, backbone: str = "small-cnn",
             pretrained_weights: str = "", strategy: str = "freeze:1", finetune_args: dict | None = None,
             method: str = "dann+finetune", adapt_args: dict | None = None, register_as: str = "") -> dict:
    """The transfer pipeline's components, in its order, each through its python_func: ingest -> pretrain ->
    finetune / target-only / adapt -> evaluate (-> register as `register_as`); their artifacts by name."""
    a = {name: artifact(dsl.Dataset, root / name) for name in SPLITS}
    ingest.python_func(**({"source": "digits", "target": "digits-m", "target_labels_per_class": 5, "target_val_per_class": 10,
                          "seed": 0, "image_size": 32, "data_version": "", "experiment": experiment,
                          "publish_to": str(root / "published"), "unseen_classes": "", "attributes": ""}
                          | (ingest_args or {})), **a)
    for name in ("source_model", "finetuned", "target_only", "adapted", "best_model"):
        a[name] = artifact(dsl.Model, root / name)
    train = TRAIN | {"experiment": experiment}
    pretrain.python_func(source_train=a["source_train"], source_val=a["source_val"], backbone=backbone,
                         pretrained_weights=pretrained_weights, source_augment="colour", model=a["source_model"], **train)
    # As on a cluster: strategies that do not train on the source are not given source_train.
    uses_source = {"source_train": a["source_train"]} if strategy.startswith(("zero-shot", "multitask")) else {}
    finetune.python_func(source_model=a["source_model"], target_labelled=a["target_labelled"], target_val=a["target_val"],
                         strategy=strategy, step_name="finetune", model=a["finetuned"], **uses_source, **(finetune_args or {}),
                         **train)
    finetune.python_func(source_model=a["source_model"],
                         target_labelled=a["target_labelled"], target_val=a["target_val"], strategy="scratch",
                         step_name="target-only", model=a["target_only"], **train)
    adapt.python_func(source_model=a["source_model"], source_train=a["source_train"],
                      target_unlabelled=a["target_unlabelled"], target_labelled=a["target_labelled"],
                      target_val=a["target_val"], method=method, finetune_epochs=1, source_augment="colour",
                      model=a["adapted"], pretrained_weights=pretrained_weights, **(adapt_args or {}), **train)
    a["evaluation"] = artifact(dsl.Artifact, root / "evaluation.json")
    a["report"] = artifact(dsl.HTML, root / "report.html")
    a["metrics"] = artifact(dsl.Metrics, root / "metrics")
    a["confusion"] = artifact(dsl.ClassificationMetrics, root / "confusion")
    evaluate.python_func(target_test=a["target_test"], target_val=a["target_val"], source_val=a["source_val"],
                         target_unlabelled=a["target_unlabelled"], select_by="auto", source_test=a["source_test"],
                         source_only=a["source_model"], target_only=a["target_only"],
                         finetuned=a["finetuned"], adapted=a["adapted"], experiment=experiment,
                         evaluation=a["evaluation"], report=a["report"], metrics=a["metrics"],
                         confusion=a["confusion"], best_model=a["best_model"])
    if register_as:
        a["registration"] = artifact(dsl.Artifact, root / "registration.json")
        a["final_report"] = artifact(dsl.HTML, root / "final-report.html")
        register.python_func(best_model=a["best_model"], evaluation=a["evaluation"], evaluation_report=a["report"],
                             target_test=a["target_test"], model_name=register_as, experiment=experiment,
                             publish_to=str(root / "published"), gate_alpha=0.05, gate_margin=0.0, min_accuracy=0.0,
                             registration=a["registration"], report=a["final_report"])
    return a


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Runs ingest -> pretrain -> finetune/target-only/adapt -> evaluate -> register once."""
    root = tmp_path_factory.mktemp("components")
    mp = pytest.MonkeyPatch()
    mp.setenv("TLPIPE_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("TLPIPE_PIPELINE_RUN", "run-1")  # what tlpipe run or the pod's label sets
    a = transfer(root, register_as="tests-model")
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
    # digits and digits-m are told apart by colour alone: features of a digits-trained model separate them.
    distances = {r["name"]: r["a_distance"] for r in evaluation["results"]}
    assert all(d is not None for d in distances.values()) and distances["source-only"] > 0.5, distances
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
    # The evaluation as one table that compares the models; each model's scores also on the run that trained it.
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "report/evaluation_table.json")).read_text())
    assert table["columns"][:4] == ["model", "role", "val_accuracy", "test_accuracy"]
    assert [row[0] for row in table["data"]] == ["source-only", "target-only", "finetuned", "adapted"]
    _, _, steps = _runs()
    evaluation = json.loads(Path(chain["evaluation"].path).read_text())
    adapted = next(r for r in evaluation["results"] if r["name"] == "adapted")
    assert steps["adapt"].data.metrics["a_distance"] == pytest.approx(adapted["a_distance"], abs=1e-9)


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
    # The version page's first lines: what the model is, on which data, how good, and the gate's verdict.
    assert version.description.startswith(f"{version.tags['tlpipe.candidate']} (") and ", small-cnn, from digits to digits-m, " in version.description
    assert "target test images (chance " in version.description and "Gate: promoted: the first champion." in version.description
    tags = version.tags
    assert tags["tlpipe.pipeline_run"] == "run-1"
    assert tags["tlpipe.test_hash"] == chain["target_test"].metadata["content_hash"]
    lineage = json.loads(tags["tlpipe.lineage"])
    assert lineage["datasets"] == {split: chain[split].metadata["content_hash"] for split in SPLITS}
    assert lineage["selected_by"] == "target-val"
    assert "tlpipe.params" not in tags  # the hyperparameters are on the training run
    assert tags["tlpipe.method"] == load_model(chain["best_model"].path)[1]["method"]
    assert (tags["tlpipe.source"], tags["tlpipe.target"], tags["tlpipe.backbone"]) == ("digits", "digits-m", "small-cnn")
    gate = json.loads(tags["tlpipe.gate"])
    assert gate["challenger_accuracy"] == pytest.approx(float(tags["tlpipe.accuracy"]), abs=1e-6)
    assert "challenger" not in client.get_registered_model("tests-model").aliases  # a promoted version: champion only
    published = Path(tags["tlpipe.published"])
    assert published == Path(chain["target_test"].path).parent / "published" / "run-1" / "model"
    assert (published / "model.safetensors").is_file()
    assert (published.parent / "datasets" / "target_test" / "samples.safetensors").is_file()
    assert (published.parent / "datasets" / "target_test" / "shards" / "index.json").is_file()
    assert lineage["code_version"].startswith("0.1.0")


def test_one_parent_run_with_a_nested_run_per_step(chain):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("tests")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs, not GenAI
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tlpipe.role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    steps = {r.data.tags["tlpipe.step"]: r for r in runs if r.data.tags.get("tlpipe.role") == "step"}
    assert set(steps) == {"ingest", "pretrain", "finetune", "target-only", "adapt", "evaluate", "register"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in steps.values())
    history = client.get_metric_history(steps["pretrain"].info.run_id, "train_loss")
    assert [m.step for m in history] == [0]
    # Validation accuracy every epoch next to training accuracy: dann+finetune's 1 + 1 epochs.
    assert [m.step for m in client.get_metric_history(steps["adapt"].info.run_id, "val_accuracy")] == [0, 1]
    assert [m.step for m in client.get_metric_history(steps["finetune"].info.run_id, "val_accuracy")] == [0]
    # source_augment reaches the training of the source images, and only there; parameters under plain names.
    assert steps["pretrain"].data.params["augment"] == steps["adapt"].data.params["augment"] == "colour"
    assert steps["finetune"].data.params["augment"] == "none" and steps["finetune"].data.params["epochs"] == "1"
    for run in steps.values():  # no machine paths (checkpoints) among parameters
        assert not any(value.startswith("/") for value in run.data.params.values()), run.data.params


STEP_OF = {"source-only": "pretrain", "target-only": "target-only", "finetuned": "finetune", "adapted": "adapt"}


def _runs(experiment="tests"):
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("tlpipe.role") == "pipeline")
    steps = {r.data.tags["tlpipe.step"]: r for r in runs if r.data.tags.get("tlpipe.role") == "step"}
    return client, parent, steps


def test_the_parent_run_summarises_the_pipeline_run(chain):
    client, parent, _ = _runs()
    params = parent.data.params
    assert {k: params[k] for k in ("source", "target", "backbone", "strategy", "adapt_method", "seed",
                                    "target_labels_per_class", "select_by")} == {
        "source": "digits", "target": "digits-m", "backbone": "small-cnn", "strategy": "freeze:1",
        "adapt_method": "dann+finetune", "seed": "0", "target_labels_per_class": "5", "select_by": "target-val"}
    # How long and how each model trained, as the chain's components were given it.
    assert {k: params[k] for k in ("source_epochs", "finetune_epochs", "adapt_epochs", "lr", "batch_size",
                                    "source_augment", "target_augment")} == {
        "source_epochs": "1", "finetune_epochs": "1", "adapt_epochs": "1", "lr": "0.01", "batch_size": "64",
        "source_augment": "colour", "target_augment": "none"}
    evaluation = json.loads(Path(chain["evaluation"].path).read_text())
    for r in evaluation["results"]:
        assert parent.data.metrics[f"{r['name']}_test_accuracy"] == pytest.approx(r["accuracy"])
        assert parent.data.metrics[f"{r['name']}_val_accuracy"] == pytest.approx(r["val_accuracy"])
    best = next(r for r in evaluation["results"] if r["name"] == evaluation["best"])
    assert parent.data.metrics["selected_test_accuracy"] == pytest.approx(best["accuracy"])
    tags = parent.data.tags
    assert tags["tlpipe.selected"] == best["name"] and tags["tlpipe.gate.verdict"] == "promoted: the first champion"
    assert f"**{best['name']}**" in tags["mlflow.note.content"] and "version 1" in tags["mlflow.note.content"]
    assert {d.dataset.name.split("/")[1] for d in parent.inputs.dataset_inputs} == set(SPLITS)
    report = client.download_artifacts(parent.info.run_id, "report.html")
    assert Path(report).read_text() == Path(chain["final_report"].path).read_text()


def test_each_model_is_logged_in_the_run_that_trained_it_and_registered_from_there(chain):
    import mlflow
    import numpy as np

    client, parent, steps = _runs()
    models = {m.name: m for m in client.search_logged_models([parent.info.experiment_id])}
    assert set(models) == {"source-only", "finetune-freeze-1", "target-only", "dann+finetune"}
    trained_by = {"source-only": "pretrain", "finetune-freeze-1": "finetune", "target-only": "target-only",
                  "dann+finetune": "adapt"}
    test_digest = chain["target_test"].metadata["content_hash"].split(":")[1][:32]
    for name, model in models.items():
        assert model.source_run_id == steps[trained_by[name]].info.run_id
        scores = {(m.key, m.dataset_name, m.dataset_digest) for m in model.metrics}
        assert ("target_test_accuracy", "digits-m/target_test", test_digest) in scores
    version = client.get_model_version_by_alias("tests-model", "champion")
    selected = json.loads(Path(chain["evaluation"].path).read_text())["best"]
    assert version.run_id == steps[STEP_OF[selected]].info.run_id  # one click from the version to its parameters
    loaded = mlflow.pyfunc.load_model("models:/tests-model@champion")
    assert loaded.metadata.saved_input_example_info is not None
    predicted = loaded.predict(np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8))
    assert len(predicted) == 3 and set(predicted["class_id"]) <= set(range(10))
    assert ((predicted["confidence"] > 0) & (predicted["confidence"] <= 1)).all()


def test_runs_list_the_splits_they_read_with_the_hashes_ingest_wrote(chain):
    _, _, steps = _runs()

    def inputs(step):
        return {(d.dataset.name.split("/")[1], next(t.value for t in d.tags if t.key == "mlflow.data.context")):
                d.dataset for d in steps[step].inputs.dataset_inputs}

    ingested = inputs("ingest")
    assert {name for name, _ in ingested} == set(SPLITS)
    for (name, _), dataset in ingested.items():
        full = chain[name].metadata["content_hash"]
        assert dataset.digest == full.split(":")[1][:32] and json.loads(dataset.profile)["content_hash"] == full
        assert json.loads(dataset.profile)["images"] == chain[name].metadata["count"]
    assert set(inputs("pretrain")) == {("source_train", "training"), ("source_val", "validation")}
    assert set(inputs("evaluate")) == {("target_test", "test"), ("target_val", "validation")}


def test_the_report_names_what_ran_and_reads_in_a_narrow_window(chain):
    import shutil

    _, parent, _ = _runs()
    report = Path(chain["final_report"].path).read_text()
    assert "digits -&gt; digits-m" in report  # the title: source and target
    for fact in ("run-1", parent.info.run_id, "dann+finetune", "freeze:1", "<th>date</th>", "<th>MLflow run</th>"):
        assert fact in report, fact
    if not shutil.which("chromium"):
        pytest.skip("no Chromium here (scripts/setup installs Debian's chromium where apt-get can)")
    from tlpipe import browser

    for width in (1400, 700):
        page_width, height = browser.page_size(chain["final_report"].path, width)
        assert page_width <= width and height > 1000, (width, page_width, height)


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


def test_a_strategy_that_trains_on_the_source_needs_source_train(chain, tmp_path, capsys):
    from components.finetune import strategy_uses_source

    assert [strategy_uses_source.python_func(strategy=s) for s in ("full", "scratch", "multitask:0.5", "zero-shot:attributes")] \
        == [False, False, True, True]
    with pytest.raises(SystemExit) as exit_info:
        finetune.python_func(source_model=chain["source_model"], target_labelled=chain["target_labelled"],
                             target_val=chain["target_val"], strategy="multitask", step_name="finetune",
                             model=artifact(dsl.Model, tmp_path / "model"), **TRAIN)
    assert exit_info.value.code == 2
    assert "strategy 'multitask' trains on the source images too; give it source_train" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_retraining_without_a_champion_starts_from_a_source_model_it_trains(chain, tmp_path, monkeypatch):
    from components.champion import champion

    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-retrain")

    start = artifact(dsl.Model, tmp_path / "start")
    champion.python_func(source_train=chain["source_train"], model_name="no-champion-yet", backbone="small-cnn",
                         pretrained_weights="", source_augment="none", model=start, **TRAIN)
    assert start.metadata["start"] == "source" and "champion_version" not in start.metadata
    assert load_model(start.path)[1]["method"] == "source-only"


@pytest.mark.parametrize("strategy", ["multitask:0.5", "progressive"])
def test_other_transfer_settings_train_and_are_reported_through_the_components(chain, tmp_path, monkeypatch, strategy):
    """What the pipeline does with a multi-task or progressive model: train it (multi-task on the source
    images too), score it next to the baselines, and for multi-task, report each task against a
    single-task model."""
    from tlpipe.evaluate import Evaluation
    from tlpipe.report import format_table

    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", f"run-{strategy}")
    model = artifact(dsl.Model, tmp_path / "model")
    finetune.python_func(source_model=chain["source_model"], target_labelled=chain["target_labelled"],
                         target_val=chain["target_val"], source_train=chain["source_train"], strategy=strategy,
                         step_name="finetune", model=model, **TRAIN)
    out = {name: artifact(kind, tmp_path / name) for name, kind in (
        ("evaluation", dsl.Artifact), ("report", dsl.HTML), ("metrics", dsl.Metrics),
        ("confusion", dsl.ClassificationMetrics), ("best_model", dsl.Model))}
    evaluate.python_func(target_test=chain["target_test"], target_val=chain["target_val"], source_val=chain["source_val"],
                         target_unlabelled=chain["target_unlabelled"], select_by="auto", source_test=chain["source_test"],
                         source_only=chain["source_model"], target_only=chain["target_only"], finetuned=model,
                         adapted=chain["adapted"], experiment="tests", **out)
    evaluation = Evaluation.load(out["evaluation"].path)
    assert [r.name for r in evaluation.results] == ["source-only", "target-only", "finetuned", "adapted"]
    table, report = format_table(evaluation), Path(out["report"].path).read_text()
    if strategy.startswith("multitask"):
        assert "task source   finetuned: multi-task" in table and "task target   finetuned: multi-task" in table
        assert "Multi-task: each task against a single-task model" in report
    else:
        assert load_model(model.path)[0].spec.progressive and "task " not in table


def test_a_source_free_adaptation_reads_no_source_image_and_keeps_the_source_head(chain, tmp_path):
    """SHOT from the source model: its source_train is a path that holds nothing, and the step's MLflow
    run lists no source split among its inputs."""
    import torch
    from mlflow import MlflowClient

    a = chain
    adapted = artifact(dsl.Model, tmp_path / "shot")
    adapt.python_func(source_model=a["source_model"], source_train=artifact(dsl.Dataset, tmp_path / "never-written"),
                      target_unlabelled=a["target_unlabelled"], target_labelled=a["target_labelled"],
                      target_val=a["target_val"], method="shot", finetune_epochs=1, source_augment="colour",
                      model=adapted, **(TRAIN | {"experiment": "tests-source-free"}))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests-source-free").experiment_id
    [run] = client.search_runs([experiment], "tags.`tlpipe.step` = 'adapt'")
    assert run.data.params["method"] == "shot"
    assert {d.dataset.name.split("/")[1] for d in run.inputs.dataset_inputs} == {"target_unlabelled", "target_val"}
    assert run.data.params["augment"] == "none"  # target_augment's auto for a built-in domain, not source_augment
    source, _ = load_model(a["source_model"].path)
    model, meta = load_model(adapted.path)
    assert meta["method"] == "shot" and torch.equal(model.head.weight, source.head.weight)
    assert not torch.equal(model.blocks[0][0].weight, source.blocks[0][0].weight)


def test_zero_shot_keeps_the_unseen_classes_out_of_training_and_reports_them(tmp_path, monkeypatch):
    """strategy=zero-shot:attributes with unseen_classes=7,8,9 through every component: ingest keeps the
    unseen classes out of every labelled split a model trains or is chosen on, finetune trains the attribute head
    on the source too, and evaluate scores seen, unseen and unseen-among-unseen images in the table and
    the report."""
    from tlpipe.evaluate import Evaluation
    from tlpipe.report import format_table

    monkeypatch.setenv("TLPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-zero-shot")
    a = transfer(tmp_path, "tests-zero-shot", {"unseen_classes": "7,8,9"}, strategy="zero-shot:attributes", method="dann")
    for split in ("source_train", "source_val", "target_labelled", "target_val"):
        data, meta = load_dataset(a[split].path)
        assert not {"7", "8", "9"} & {meta["classes"][i] for i in set(data.labels.tolist())}, split
    test, _ = load_dataset(a["target_test"].path)
    assert {7, 8, 9} <= set(test.labels.tolist())
    model, meta = load_model(a["finetuned"].path)
    assert meta["method"] == "finetune:zero-shot:attributes" and model.spec.head == "attributes"
    evaluation = Evaluation.load(a["evaluation"].path)
    table = format_table(evaluation)
    assert evaluation.unseen == ["7", "8", "9"] and "unseen classes 7, 8, 9 (never in training)" in table and "unseen*" in table
    assert "Zero-shot: unseen classes 7, 8, 9" in Path(a["report"].path).read_text()


def test_a_timm_backbone_from_hub_weights_runs_through_the_components(tmp_path, monkeypatch, hf_cache):
    """timm:test_resnet started from timm's pretrained tag, read offline from a test-populated Hugging Face
    cache; adapted by CDAN+MCC with SDAT, a bottleneck and (by default, with pretrained weights) the
    backbone at 0.1x the rate; registered with timm in its serving requirements."""
    import mlflow
    import timm
    import torch
    from helpers import put_in_hf_cache
    from mlflow import MlflowClient

    from tlpipe.report import format_table

    torch.manual_seed(0)
    hub_id = timm.models.get_pretrained_cfg("test_resnet.r160_in1k").hf_hub_id
    reference = timm.create_model("test_resnet", num_classes=1000)
    put_in_hf_cache(hf_cache, hub_id, {"model.safetensors": reference.state_dict()})
    monkeypatch.setenv("TLPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TLPIPE_PIPELINE_RUN", "run-timm")
    a = transfer(tmp_path, "tests-timm", backbone="timm:test_resnet", pretrained_weights="timm:test_resnet.r160_in1k",
                 strategy="full", finetune_args={"backbone_lr": 0.5}, method="cdan+mcc+sdat",
                 adapt_args={"bottleneck": 32}, register_as="timm")
    from tlpipe.evaluate import Evaluation

    assert ("every model starts from timm:test_resnet.r160_in1k; target-only is those weights with a new head"
            in format_table(Evaluation.load(a["evaluation"].path)))
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests-timm").experiment_id
    by_step = {r.data.tags["tlpipe.step"]: r for r in client.search_runs([experiment], "tags.`tlpipe.role` = 'step'")}
    assert by_step["pretrain"].data.params["backbone"] == "timm:test_resnet"
    adapt_params = by_step["adapt"].data.params
    # The bottleneck as given; the backbone's rate, not given, the pretrained recipe's.
    assert (adapt_params["method"], adapt_params["bottleneck"], adapt_params["backbone_lr"]) == ("cdan+mcc+sdat", "32", "0.1")
    assert by_step["finetune"].data.params["backbone_lr"] == "0.5" and "backbone_lr" not in by_step["pretrain"].data.params
    assert "train_mcc_loss" in by_step["adapt"].data.metrics
    assert a["registration"].metadata["version"] == "1"
    # A serving environment built from the registered model gets timm.
    assert f"timm=={timm.__version__}" in Path(mlflow.pyfunc.get_model_dependencies("models:/timm/1")).read_text()
