"""The transfer pipeline end to end through `tlpipe run` (kfp.local), with tiny epochs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import write_image_folder
from mlflow import MlflowClient

from tlpipe.data import load_dataset

pytestmark = pytest.mark.e2e
TINY = ["source_epochs=2", "finetune_epochs=2", "adapt_epochs=2", "target_labels_per_class=5"]


def tlpipe_run(home: Path, *params: str, pipeline: str = "transfer", env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"TLPIPE_HOME": str(home)} | (env or {})
    args = [arg for p in params for arg in ("-p", p)]
    return subprocess.run([sys.executable, "-m", "tlpipe.cli", "run", pipeline, *args], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e") / "home"


@pytest.fixture(scope="module")
def first_run(home):
    result = tlpipe_run(home, *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def registry(home, monkeypatch):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def versions(client):
    return sorted(int(v.version) for v in client.search_model_versions("name='tlpipe'"))


def last_pipeline_run(client) -> tuple:
    """The newest pipeline run's MLflow parent run and its step runs."""
    experiment = client.get_experiment_by_name("tlpipe").experiment_id
    parent = client.search_runs([experiment], "tags.`tlpipe.role` = 'pipeline'", order_by=["start_time DESC"])[0]
    run = parent.data.tags["tlpipe.pipeline_run"]
    steps = client.search_runs([experiment], f"tags.`tlpipe.pipeline_run` = '{run}' and tags.`tlpipe.role` = 'step'")
    return parent, steps


def test_run_prints_table_registration_and_report(first_run, home):
    out = first_run.stdout
    for row in ("source-only", "target-only", "finetuned", "adapted"):
        assert f"\n{row} " in out
    assert "registered model: tlpipe version 1 (alias champion)" in out
    assert "champion: version 1 (promoted: the first champion)" in out
    assert "A-dist" in out  # proxy A-distance per model
    assert "close-run" in out  # the exit handler ran
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert header.split()[:5] == ["model", "role", "val", "acc", "test"]
    assert "selected by target validation accuracy (100 images); test acc: target test split" in out
    assert out.count("<- selected") == 1
    report = Path(out.split("report: ")[1].split()[0])
    assert report.suffix == ".html" and "<table>" in report.read_text() and "t-SNE" in report.read_text()
    assert (home / "mlflow.db").is_file() and (home / "mlartifacts").is_dir() and (home / "pipeline-root").is_dir()


def test_a_finished_run_closes_its_mlflow_runs(first_run, registry):
    parent, steps = last_pipeline_run(registry)
    assert parent.info.status == "FINISHED"
    # One identifier names the run: the MLflow run's name, the report's file, and the report itself.
    out = first_run.stdout
    report = Path(out.split("report: ")[1].split()[0])
    assert parent.info.run_name == parent.data.tags["tlpipe.pipeline_run"] == report.stem
    assert parent.info.run_name in report.read_text()
    link = f"MLflow run {parent.info.run_id}: #/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    assert link in out
    assert {r.data.tags["tlpipe.step"]: r.info.status for r in steps} == dict.fromkeys(
        ["ingest", "pretrain", "finetune", "target-only", "adapt", "evaluate", "register"], "FINISHED")


def test_champion_reproduces_the_reported_accuracy(first_run, home, registry):
    model = mlflow.pyfunc.load_model("models:/tlpipe@champion")
    [test_dir] = list((home / "pipeline-root").glob("*/*/ingest/target_test"))
    [evaluation_file] = list((home / "pipeline-root").glob("*/*/evaluate/evaluation"))
    evaluation = json.loads(evaluation_file.read_text())
    reported = next(r["accuracy"] for r in evaluation["results"] if r["name"] == evaluation["best"])
    test, _ = load_dataset(test_dir)
    images = np.asarray(test.images)  # what a user hands the registered model: decoded pixels
    predicted = model.predict(images)
    assert list(predicted.columns) == ["class_id", "class", "confidence"] and len(predicted) == len(test)
    assert (predicted["class_id"].to_numpy() == test.labels).mean() == pytest.approx(reported, abs=1e-12)
    assert (predicted["class"] == [test.classes[i] for i in predicted["class_id"]]).all()
    big = np.repeat(np.repeat(images[:4], 2, axis=1), 3, axis=2)  # any H and W: 64 x 96
    assert len(model.predict(big)) == 4


def test_predict_runs_the_champion_over_a_folder_of_images(first_run, home, registry, tmp_path):
    """`tlpipe run predict`: the champion over PNG files, most in folders named after their digit, some
    loose; a Parquet row per image with the champion's answer, and the pipeline's MLflow runs closed."""
    import pyarrow.parquet as pq
    from PIL import Image

    [test_dir] = list((home / "pipeline-root").glob("*/*/ingest/target_test"))
    test, _ = load_dataset(test_dir)
    images = np.asarray(test.images)[:50]
    for i, (pixels, label) in enumerate(zip(images, test.labels[:50])):
        folder = tmp_path / "batch" / (test.classes[label] if i < 40 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:03}.png")
    champion = registry.get_model_version_by_alias("tlpipe", "champion").version
    result = tlpipe_run(home, f"images=imagefolder:{tmp_path / 'batch'}", pipeline="predict")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"predicted 50 images of imagefolder:{tmp_path / 'batch'} with tlpipe version {champion}" in out
    assert "folders named after a class: 40 images" in out and "report:" not in out
    rows = pq.read_table(out.split("predictions: ")[1].split()[0]).to_pandas()
    expected = mlflow.pyfunc.load_model("models:/tlpipe@champion").predict(images)
    order = [int(Path(name).stem) for name in rows["image"]]  # the rows follow the files' sorted paths
    assert len(rows) == 50 and list(rows["class"]) == list(expected["class"].to_numpy()[order])
    parent, steps = last_pipeline_run(registry)
    assert parent.info.status == "FINISHED" and [r.info.status for r in steps] == ["FINISHED"]
    assert parent.data.params["model_version"] == str(champion)


def test_a_refusal_inside_the_dag_is_one_sentence_and_leaves_the_registry_alone(first_run, home, registry, tmp_path):
    """A corrupt image, which only ingest sees (preflight reads listings, not pixels): the run stops there
    with one sentence and exit 2, no traceback, and the registry as it was. The folders have the
    champion's classes, so preflight lets the run start. (Every other refusal is a unit test:
    tests/test_preflight.py.)"""
    before = versions(registry)
    champion = str(registry.get_model_version_by_alias("tlpipe", "champion").version)
    digits = [str(i) for i in range(10)]
    source = write_image_folder(tmp_path / "source", classes=digits, per_class=12)
    target = write_image_folder(tmp_path / "target", classes=digits, per_class=12, seed=1)
    (target / "3" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = tlpipe_run(home, *TINY, f"source=imagefolder:{source}", f"target=imagefolder:{target}", "image_size=16")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlpipe: error:")]
    expected = "target/3/0.png: it is corrupt or truncated"
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert f"; the full log is {home / 'logs'}/" in errors[0] and "\x1b[" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert versions(registry) == before
    assert str(registry.get_model_version_by_alias("tlpipe", "champion").version) == champion
    experiment = registry.get_experiment_by_name("tlpipe").experiment_id
    assert not registry.search_runs([experiment], "attributes.status = 'RUNNING'")  # no run left open


def test_retrain_starts_from_the_champion_and_promotes_only_through_the_gate(first_run, home, registry):
    """A gate no challenger can pass (a gain of 100 points): the retrained candidate is registered as the
    challenger with the gate's evidence, and the champion stays. (Which evidence promotes is a unit test:
    tests/test_registry.py.) Adapted by AdaMatch, which also reads the labelled target images and has its
    pseudo-labels watched on the target validation split."""
    champion = registry.get_model_version_by_alias("tlpipe", "champion")
    before = versions(registry)
    result = tlpipe_run(home, *TINY, "adapt_epochs=1", "gate_margin=100", "adapt_method=adamatch", pipeline="retrain")  # a gain of 100 points
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, steps = last_pipeline_run(registry)
    [adapt] = [r for r in steps if r.data.tags["tlpipe.step"] == "adapt"]
    assert adapt.data.params["method"] == "adamatch"
    assert {"val_pseudo_label_share", "val_pseudo_label_accuracy", "train_pseudo_label_threshold"} <= set(adapt.data.metrics)
    assert "target_labelled" in {i.dataset.name.split("/")[1] for i in adapt.inputs.dataset_inputs}
    assert f"\nchampion-v{champion.version} " in result.stdout
    [start] = list((home / "pipeline-root").glob("*/tlpipe-retrain-*/champion/model"))
    assert json.loads((start / "model.json").read_text())["registered_version"] == str(champion.version)
    [evaluation_file] = list((home / "pipeline-root").glob("*/tlpipe-retrain-*/evaluate-retrain/evaluation"))
    evaluation = json.loads(evaluation_file.read_text())
    assert evaluation["best"] in ("finetuned", "adapted")  # the champion is the baseline, never re-registered
    accuracy = {r["name"]: r["accuracy"] for r in evaluation["results"]}
    new = max(versions(registry))
    assert versions(registry) == before + [new]
    assert f"gate: on the same {evaluation['test_count']} test images, v{new} " in result.stdout
    assert f"champion: version {champion.version} (kept champion v{champion.version}: not shown better" in result.stdout
    assert str(registry.get_model_version_by_alias("tlpipe", "champion").version) == str(champion.version)
    assert str(registry.get_model_version_by_alias("tlpipe", "challenger").version) == str(new)
    gate = json.loads(registry.get_model_version("tlpipe", str(new)).tags["tlpipe.gate"])
    p = gate["p_value"]
    assert 0 <= p <= 1 and gate["promoted"] is False
    assert gate["challenger_accuracy"] == pytest.approx(accuracy[evaluation["best"]], abs=1e-6)
    assert f"one-sided exact McNemar p = {p:.3g}" in result.stdout
    report = Path(result.stdout.split("report: ")[1].split()[0]).read_text()
    assert "one-sided exact McNemar p</td>" in report and f"kept champion v{champion.version}" in report
    # (Retraining without a champion, from a source model it trains: tests/test_components.py; zero-shot and a
    # timm backbone from hub weights, through every component: there too.)


def test_source_free_adapts_a_registered_model_without_a_source_image(first_run, home, registry):
    """A model from elsewhere (here the first run's champion) adapted to the target by SHOT from its images
    alone: no source domain is ingested or read, the model itself is the source-only baseline, and the
    model chosen on target validation data is registered, behind the gate, under its own name."""
    champion = registry.get_model_version_by_alias("tlpipe", "champion")
    result = tlpipe_run(home, "source_model=models:/tlpipe@champion", "target=digits-m", "target_labels_per_class=5",
                        "finetune_epochs=2", "adapt_epochs=2", "model_name=adapted-elsewhere", pipeline="source-free")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for row in ("source-only", "target-only", "finetuned", "adapted"):
        assert f"\n{row} " in result.stdout, row
    assert "registered model: adapted-elsewhere version 1 (alias champion)" in result.stdout
    parent, steps = last_pipeline_run(registry)
    by_step = {r.data.tags["tlpipe.step"]: r for r in steps}
    assert {by_step["ingest"].data.metrics[f"source_{split}_count"] for split in ("train", "val", "test")} == {0}
    assert by_step["adapt"].data.params["method"] == "shot"
    read = {i.dataset.name.split("/")[1] for r in steps for i in r.inputs.dataset_inputs}
    assert read and not any(name.startswith("source") for name in read), read
    assert parent.data.params["source_model"] == f"models:/tlpipe/{champion.version}"
    version = registry.get_model_version_by_alias("adapted-elsewhere", "champion")
    assert version.tags["tlpipe.source"] == f"models:/tlpipe/{champion.version}"
    assert str(registry.get_model_version_by_alias("tlpipe", "champion").version) == str(champion.version)
    report = Path(result.stdout.split("report: ")[1].split()[0]).read_text()
    assert f"tlpipe transfer report: models:/tlpipe/{champion.version} -&gt; digits-m" in report


def test_the_readmes_quick_start_runs_as_written(tmp_path):
    """The README's "Your own images" commands as a new user pastes them: in an empty folder next to the
    checkout's .venv, on the embedded default home (./.tlpipe), to a champion better than chance."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("\n## Your own images\n")[1].split("```bash\n")[1].split("```")[0]
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 3 and commands[-1].startswith(".venv/bin/tlpipe run ")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the checkout's environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLPIPE_", "MLFLOW_"))}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, command + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "registered model: photos version 1 (alias champion)" in out
    accuracy = float(out.split("registered model: photos version 1 (alias champion), test accuracy ")[1].split("%")[0])
    chance = float(out.split("\nchance: ")[1].split("%")[0])
    assert accuracy > chance + 20, out[-3000:]
    assert (tmp_path / ".tlpipe" / "mlflow.db").exists()


def test_layer_sweep_runs_in_parallel_and_plots_accuracy_against_blocks(home):
    result = tlpipe_run(home, "source=syn-digits", "target=digits", "source_epochs=1", "finetune_epochs=1",
                        "blocks=[0,2,4]", pipeline="layer-sweep")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit() and "%" in line]
    assert [r[0] for r in rows] == ["0", "2", "4"] and all(len(r) == 3 for r in rows)
    assert rows[0][1] == rows[0][2]  # k = 0: frozen and fine-tuned are the same target-only training
    report = Path(result.stdout.split("report: ")[1].split()[0]).read_text()
    assert "layer sweep" in report and "data:image/png;base64," in report
