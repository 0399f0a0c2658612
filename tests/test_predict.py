"""Batch prediction: the image files of a folder listed and decoded in order, a registered model named by
its alias or version, and the predict step's Parquet rows and label-free signals. (The pipeline through
`tlpipe run predict`: tests/test_pipeline_local.py; an S3 prefix: tests/test_stack.py.)"""

import json

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_image_folder
from PIL import Image

from tlpipe import registry, tracking
from tlpipe.data.files import decoded, file_batches, image_files
from tlpipe.errors import TlpipeError
from tlpipe.models import Classifier, ModelSpec, save_model

CLASSES = ["a", "b", "c"]


def test_every_png_and_jpeg_at_any_depth_is_listed_in_order_and_the_rest_left_out(tmp_path):
    write_image_folder(tmp_path / "in", classes=("a", "b"), per_class=2)
    Image.new("RGB", (5, 7)).save(tmp_path / "in" / "top.JPG")
    (tmp_path / "in" / "2026" / "12").mkdir(parents=True)
    Image.new("L", (9, 9)).save(tmp_path / "in" / "2026" / "12" / "deep.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / ".DS_Store").write_bytes(b"")
    (tmp_path / "in" / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "in" / ".cache" / "hidden.png")
    files = image_files(f"imagefolder:{tmp_path / 'in'}/")
    assert files.names == ["2026/12/deep.png", "a/0.png", "a/1.png", "b/0.png", "b/1.png", "top.JPG"]
    assert files.skipped == ["notes.txt"]
    assert [files.folder(n) for n in files.names] == ["2026", "a", "a", "b", "b", ""]


@pytest.mark.parametrize("spec, refusal", [
    ("{tmp}/in", "images must be imagefolder:<folder or s3://bucket/prefix>, got"),
    ("imagefolder:{tmp}/missing", "image folder {tmp}/missing does not exist"),
    ("imagefolder:{tmp}/in/notes.txt", "is not a directory"),
    ("imagefolder:{tmp}/in", "holds no PNG or JPEG images (only 1 other files, e.g. notes.txt)"),
])
def test_a_folder_with_no_images_is_refused_in_one_sentence(tmp_path, spec, refusal):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.raises(TlpipeError, match=refusal.format(tmp=tmp_path).replace("(", r"\(").replace(")", r"\)")):
        image_files(spec.format(tmp=tmp_path))


def test_batches_come_decoded_in_listing_order_and_a_corrupt_file_is_named(tmp_path):
    write_image_folder(tmp_path / "in", per_class=5, size=20)
    files = image_files(f"imagefolder:{tmp_path / 'in'}")
    batches = list(file_batches(files, 16, batch_size=4, workers=2))
    assert [len(b) for b in batches] == [4, 4, 4, 3] and batches[0].dtype == torch.uint8
    expected = np.stack([decoded((tmp_path / "in" / n).read_bytes(), 16, n) for n in files.names])
    assert np.array_equal(torch.cat(batches).numpy(), expected) and expected.shape == (15, 16, 16, 3)
    (tmp_path / "in" / "b" / "3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(TlpipeError, match=rf"cannot read image {tmp_path / 'in'}/b/3\.png: it is corrupt"):
        list(file_batches(files, 16, batch_size=4, workers=2))


@pytest.fixture
def registered(tlpipe_home, tmp_path):
    """Two versions of a small model of CLASSES, version 2 the champion, in the embedded default."""
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "predict")):
        for seed in (0, 1):
            torch.manual_seed(seed)
            save_model(tmp_path / f"model-{seed}", Classifier(ModelSpec("small-cnn", CLASSES, 16)))
            registry.log_and_register(tmp_path / f"model-{seed}", "shapes", {tracking.PIPELINE_RUN_TAG: f"run-{seed}"})
    client.set_registered_model_alias("shapes", "champion", "2")
    return client


def test_a_model_uri_names_a_registered_version_or_says_why_not(registered):
    assert registry.registered_version("models:/shapes@champion") == ("shapes", "2")
    assert registry.registered_version("models:/shapes/1") == ("shapes", "1")
    for uri, refusal in [("shapes", "model must be models:/<name>@<alias> or models:/<name>/<version>"),
                         ("models:/nothing@champion", "no registered model 'nothing'"),
                         ("models:/shapes@production", r"model 'shapes' has no alias 'production'; its aliases: champion \(v2\)"),
                         ("models:/shapes/7", "model 'shapes' has no version 7")]:
        with pytest.raises(TlpipeError, match=refusal):
            registry.registered_version(uri)


@pytest.mark.slow  # a registered model, 500 images
def test_the_predict_step_writes_the_champions_prediction_for_each_of_500_images(registered, tmp_path):
    from tlpipe.steps.predict import PREDICTIONS_FILE, SUMMARY_FILE, PredictionSummary, predict

    write_image_folder(tmp_path / "in", classes=("a", "b", "other"), per_class=160, size=24)
    for i in range(20):
        Image.fromarray(np.full((30, 20, 3), 40 * (i % 6), np.uint8)).save(tmp_path / "in" / f"loose-{i:02}.jpg")
    summary = predict("models:/shapes@champion", f"imagefolder:{tmp_path / 'in'}", str(tmp_path / "out"), "predict",
                      "run-predict")
    rows = pq.read_table(tmp_path / "out" / PREDICTIONS_FILE).to_pandas()
    files = image_files(f"imagefolder:{tmp_path / 'in'}")
    assert len(rows) == 500 and list(rows["image"]) == files.names
    assert list(rows.columns) == ["image", "folder", "class_id", "class", "confidence", "entropy"]
    # What the champion itself answers for the same pixels, through MLflow's pyfunc.
    pixels = np.stack([decoded((tmp_path / "in" / n).read_bytes(), 16, n) for n in files.names])
    served = mlflow.pyfunc.load_model("models:/shapes@champion").predict(pixels)
    assert list(rows["class"]) == list(served["class"])
    np.testing.assert_allclose(rows["confidence"], served["confidence"], rtol=1e-5)
    assert ((rows["entropy"] >= 0) & (rows["entropy"] <= 1)).all()
    assert summary == PredictionSummary.load(tmp_path / "out" / SUMMARY_FILE)
    assert (summary.model_name, summary.version, summary.count) == ("shapes", "2", 500)
    assert summary.predicted == rows["class"].value_counts().reindex(CLASSES, fill_value=0).to_dict()
    in_class = rows[rows["folder"].isin(CLASSES)]
    assert summary.folder_count == 320 == len(in_class)  # "other" and the loose files name no class
    assert summary.folder_agreement == pytest.approx((in_class["folder"] == in_class["class"]).mean())
    assert summary.unsure_share == pytest.approx((rows["confidence"] < 0.5).mean())
    [run] = registered.search_runs([registered.get_experiment_by_name("predict").experiment_id],
                                   "tags.`tlpipe.step` = 'predict'")
    assert run.data.params["model_version"] == "2" and run.data.metrics["images"] == 500
    assert run.data.metrics["predicted_share_a"] == pytest.approx(summary.predicted["a"] / 500)
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions",
                                                 dst_path=str(tmp_path / "logged"))
    assert json.loads((tmp_path / "logged" / "predictions" / SUMMARY_FILE).read_text())["count"] == 500 and logged
