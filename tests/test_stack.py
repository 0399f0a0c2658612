"""S3 storage and MLflow tracking against real servers: the local stack (SeaweedFS S3 + MLflow server),
started by `tlpipe stack up` on free loopback ports and stopped at the end. Nothing here is mocked."""

import numpy as np
import pytest
import torch
from helpers import free_port, put_in_hf_cache, tlpipe, write_image_folder

from tlpipe import storage
from tlpipe.data import check_spec, load_domain
from tlpipe.data.examples import make_folder
from tlpipe.errors import TlpipeError
from tlpipe.models import read_weights

pytestmark = pytest.mark.stack
TINY = ["source_epochs=2", "finetune_epochs=2", "adapt_epochs=2", "target_labels_per_class=5"]


def test_storage_round_trips_small_and_multipart_files(stack, tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"tlpipe" * 10)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).integers(0, 255, 20 * 1024 * 1024, dtype=np.uint8).tobytes())
    storage.upload(small, "s3://tlpipe/tests/files/small.bin")
    storage.upload(big, "s3://tlpipe/tests/files/big.bin")
    assert storage.list_keys("s3://tlpipe/tests/files") == ["big.bin", "small.bin"]
    etag = storage.client().head_object(Bucket="tlpipe", Key="tests/files/big.bin")["ETag"]
    assert "-" in etag  # uploaded in parts
    for name, original in (("small.bin", small), ("big.bin", big)):
        copy = storage.download(f"s3://tlpipe/tests/files/{name}", tmp_path / "back" / name)
        assert copy.read_bytes() == original.read_bytes()
    with pytest.raises(TlpipeError, match="nothing at s3://tlpipe/tests/no-such-key"):
        storage.download("s3://tlpipe/tests/no-such-key", tmp_path / "missing")


def test_image_folder_reads_from_s3_like_a_local_folder(stack, tmp_path):
    local = write_image_folder(tmp_path / "folder", per_class=4)
    storage.upload(local, "s3://tlpipe/tests/folder")
    from_s3 = load_domain("imagefolder:s3://tlpipe/tests/folder", 16, seed=0)
    from_disk = load_domain(f"imagefolder:{local}", 16, seed=0)
    assert from_s3.classes == from_disk.classes == ["a", "b", "c"]
    assert np.array_equal(from_s3.images, from_disk.images) and np.array_equal(from_s3.labels, from_disk.labels)


def test_folder_marker_keys_are_not_images(stack, tmp_path):
    local = write_image_folder(tmp_path / "folder", per_class=4)
    storage.upload(local, "s3://tlpipe/tests/markers")
    # What the AWS console's "Create folder" and many sync tools write: zero-byte keys ending in "/".
    for marker in ("tests/markers/", "tests/markers/a/", "tests/markers/b/", "tests/markers/empty/"):
        storage.client().put_object(Bucket="tlpipe", Key=marker, Body=b"")
    assert storage.list_keys("s3://tlpipe/tests/markers") == sorted(p.relative_to(local).as_posix()
                                                                    for p in local.rglob("*") if p.is_file())
    from_s3 = load_domain("imagefolder:s3://tlpipe/tests/markers", 16, seed=0)
    assert from_s3.classes == ["a", "b", "c"] and len(from_s3) == 12
    for marker in ("tests/folder-only-markers/", "tests/folder-only-markers/a/"):
        storage.client().put_object(Bucket="tlpipe", Key=marker, Body=b"")
    with pytest.raises(TlpipeError, match="is empty or does not exist"):
        check_spec("imagefolder:s3://tlpipe/tests/folder-only-markers")


def test_the_data_version_of_an_s3_folder_changes_when_an_object_is_rewritten(stack, tmp_path):
    from tlpipe.data.spec import data_version

    local = write_image_folder(tmp_path / "folder", per_class=2)
    storage.upload(local, "s3://tlpipe/tests/versioned")
    first = data_version("imagefolder:s3://tlpipe/tests/versioned")
    assert data_version("imagefolder:s3://tlpipe/tests/versioned") == first
    other = write_image_folder(tmp_path / "other", per_class=2, seed=5)
    storage.upload(other / "a" / "0.png", "s3://tlpipe/tests/versioned/a/0.png")  # same name, new pixels
    assert data_version("imagefolder:s3://tlpipe/tests/versioned") != first


def test_images_to_predict_stream_from_an_s3_prefix_as_from_their_folder(stack, tmp_path):
    """Batch prediction's reading (tlpipe.data.files): the S3 listing leaves folder markers out, the
    objects are read in parallel and decoded to the pixels of the same files on disk."""
    from tlpipe.data.files import file_batches, image_files

    local = write_image_folder(tmp_path / "batch", per_class=7, size=20)
    storage.upload(local, "s3://tlpipe/tests/predict")
    storage.client().put_object(Bucket="tlpipe", Key="tests/predict/a/", Body=b"")
    on_s3, on_disk = image_files("imagefolder:s3://tlpipe/tests/predict"), image_files(f"imagefolder:{local}")
    assert on_s3.names == on_disk.names and len(on_s3.names) == 21
    pixels = [torch.cat(list(file_batches(files, 16, batch_size=8, workers=2))) for files in (on_s3, on_disk)]
    assert torch.equal(*pixels)


def test_a_corrupt_image_in_s3_is_named_by_its_uri(stack, tmp_path):
    local = write_image_folder(tmp_path / "folder", per_class=2)
    (local / "c" / "1.png").write_bytes(b"\x89PNG broken")
    storage.upload(local, "s3://tlpipe/tests/corrupt")
    with pytest.raises(TlpipeError, match=r"cannot read image s3://tlpipe/tests/corrupt/c/1\.png"):
        load_domain("imagefolder:s3://tlpipe/tests/corrupt", 16, seed=0)


def test_pretrained_weights_load_from_s3(stack, tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    storage.upload(tmp_path / "r18.pth", "s3://tlpipe/tests/weights/r18.pth")
    state = read_weights("s3://tlpipe/tests/weights/r18.pth")
    torch.testing.assert_close(state["conv1.weight"], reference.conv1.weight)


def test_weights_mirror_copies_hub_weights_to_s3_for_an_air_gapped_run(stack, tmp_path):
    import timm

    from tlpipe.models import Classifier, ModelSpec

    home, _ = stack
    torch.manual_seed(4)
    reference = timm.create_model("resnet18", num_classes=1000)
    put_in_hf_cache(tmp_path / "hf", "team/r18", {"model.safetensors": reference.state_dict()})
    cache = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = tlpipe(home, "weights", "mirror", "hf-hub:team/r18", "s3://tlpipe/tests/mirror", "--stack", "local", env=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    mirrored = "s3://tlpipe/tests/mirror/hf-hub--team--r18.safetensors"
    assert f"mirrored hf-hub:team/r18 to {mirrored}" in result.stdout
    model = Classifier(ModelSpec("timm:resnet18", ["a", "b"], 32), read_weights(mirrored), mirrored)
    torch.testing.assert_close(model.trunk.layer2[1].conv2.weight, reference.layer2[1].conv2.weight)
    missing = tlpipe(home, "weights", "mirror", "hf-hub:team/r18", "s3://no-such-bucket/w", "--stack", "local", env=cache)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("tlpipe: error:")]
    assert missing.returncode == 2 and len(errors) == 1 and "no-such-bucket" in errors[0], missing.stderr[-2000:]


def test_a_photo_folder_on_s3_runs_through_the_pipeline_tracked_on_the_server_with_models_in_s3(stack, tmp_path):
    """The stack's one whole run: photos (224 px JPEGs) as an S3 folder with the folder markers sync tools
    write, ingested at 32 px (sharded artifacts, photo augmentation by default for both domains' training
    images), tracked on the MLflow server, models and published splits in S3, no secret anywhere."""
    home, env = stack
    make_folder(tmp_path / "source", 1000, seed=0)
    make_folder(tmp_path / "target", 400, seed=1, shift=1.0)
    storage.upload(tmp_path / "source", "s3://tlpipe/photos/source")
    storage.upload(tmp_path / "target", "s3://tlpipe/photos/target")
    for marker in ("photos/", "photos/source/", "photos/source/class_0/", "photos/target/", "photos/target/class_9/"):
        storage.client().put_object(Bucket="tlpipe", Key=marker, Body=b"")
    params = [*TINY, "source=imagefolder:s3://tlpipe/photos/source", "target=imagefolder:s3://tlpipe/photos/target",
              "target_val_per_class=5", "model_name=photos-s3", "publish_to=s3://tlpipe/published"]
    result = tlpipe(home, "run", "--stack", "local", *[a for p in params for a in ("-p", p)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "registered model: photos-s3 version 1 (alias champion)" in result.stdout
    assert "champion: version 1 (promoted: the first champion)" in result.stdout
    keys = storage.list_keys("s3://tlpipe/mlartifacts")
    assert any(k.endswith("/model.safetensors") for k in keys), keys  # the LoggedModels' weights
    assert any(k.endswith("report/report.html") for k in keys)
    published = storage.list_keys("s3://tlpipe/published")
    assert any(k.endswith("/model/model.safetensors") for k in published)
    assert any(k.endswith("/datasets/target_test/dataset.json") for k in published)

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tlpipe").experiment_id
    ingest = client.search_runs([experiment], "tags.`tlpipe.step` = 'ingest'", order_by=["start_time DESC"])[0]
    counts = ingest.data.metrics
    assert sum(counts[f"source_{split}_count"] for split in ("train", "val", "test")) == 1000
    assert sum(counts[f"target_{split}_count"] for split in ("labelled", "val", "unlabelled", "test")) == 400
    steps = client.search_runs([experiment], f"tags.`tlpipe.pipeline_run` = '{ingest.data.tags['tlpipe.pipeline_run']}'")
    by_step = {r.data.tags["tlpipe.step"]: r for r in steps if "tlpipe.step" in r.data.tags}
    for step in ("pretrain", "finetune", "target-only", "adapt"):
        assert by_step[step].data.params["augment"] == "crop", step  # auto: 32 px images are shifted, not cut
    assert ingest.data.params["source"] == "imagefolder:s3://tlpipe/photos/source"

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model("models:/photos-s3@champion")
    assert len(model.predict(np.zeros((3, 20, 20, 3), dtype=np.uint8))) == 3

    # The S3 secret reaches no MLflow parameter, tag, registry tag or log.
    secret = env["AWS_SECRET_ACCESS_KEY"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 8
    for run in runs:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    for version in client.search_model_versions("name='photos-s3'"):
        assert secret not in repr(version.tags)
    for log in (home / "logs").glob("*.log"):
        assert secret not in log.read_text()
    assert secret not in result.stdout + result.stderr
    mlflow.set_tracking_uri(None)


def _failure(home, env, extra_params=()):
    result = tlpipe(home, "run", *[a for p in [*TINY, *extra_params] for a in ("-p", p)], env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlpipe: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    return errors[0], result.stdout + result.stderr


def test_service_failures_are_found_before_training_with_one_sentence(stack, tmp_path):
    home, env = stack
    secret = env["AWS_SECRET_ACCESS_KEY"]
    s3_folder = ["source=imagefolder:s3://tlpipe/tests/folder", "target=imagefolder:s3://tlpipe/tests/folder"]
    write_image_folder(tmp_path / "f", per_class=4)
    storage.upload(tmp_path / "f", "s3://tlpipe/tests/folder")
    down = f"http://127.0.0.1:{free_port()}"
    cases = [
        ({**env, "AWS_ENDPOINT_URL_S3": down}, s3_folder, f"cannot reach the S3 endpoint {down}"),
        ({**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, s3_folder,
         f"S3 refused the credentials for bucket 'tlpipe' at {env['AWS_ENDPOINT_URL_S3']}"),
        (env, ["source=imagefolder:s3://no-such-bucket/x"],
         f"bucket 'no-such-bucket' at {env['AWS_ENDPOINT_URL_S3']} does not exist"),
        ({**env, "MLFLOW_TRACKING_URI": down}, [], f"cannot reach the MLflow tracking server at {down}"),
    ]
    for case_env, params, expected in cases:
        error, output = _failure(tmp_path / "home", case_env, params)
        assert expected in error, error
        assert secret not in output and "not-the-secret" not in output


def test_only_the_pipelines_credentials_write_to_the_authenticated_server(stack, tmp_path):
    """The stack's MLflow runs MLflow's basic-auth app, as the chart's does. The pipelines' credentials
    registered and gated the photo-folder run's model above; no credentials, wrong ones, or a user who may only read get one sentence
    and move nothing."""
    import base64
    import json
    import urllib.request

    import mlflow

    home, env = stack
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    before = sorted(v.version for v in client.search_model_versions("name='photos-s3'"))
    champion = client.get_model_version_by_alias("photos-s3", "champion").version
    # The admin (the pipelines' identity) adds a reader through MLflow's auth API.
    request = urllib.request.Request(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/users/create", method="POST",
        data=json.dumps({"username": "reader", "password": "reader-pa55word-1"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(
            f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()})
    urllib.request.urlopen(request, timeout=10)

    anonymous = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_USER") and k != "MLFLOW_TRACKING_PASSWORD"}
    cases = [
        (anonymous, "requires authentication; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ({**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, "refused the credentials of tlpipe"),
        ({**env, "MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": "reader-pa55word-1"},
         "the MLflow tracking server refused a request of reader"),
    ]
    for case_env, expected in cases:
        error, output = _failure(tmp_path / "home", case_env, ["model_name=photos-s3"])
        assert expected in error, error
        assert "not-the-password" not in output and env["MLFLOW_TRACKING_PASSWORD"] not in output
    assert sorted(v.version for v in client.search_model_versions("name='photos-s3'")) == before
    assert client.get_model_version_by_alias("photos-s3", "champion").version == champion
    # Nor can the reader move the champion by hand.
    reader = {**env, "MLFLOW_TRACKING_USERNAME": "reader", "MLFLOW_TRACKING_PASSWORD": "reader-pa55word-1"}
    moved = tlpipe(tmp_path / "home", "rollback", "--model-name", "photos-s3", env=reader)
    assert moved.returncode == 2 and "Traceback" not in moved.stderr
    assert client.get_model_version_by_alias("photos-s3", "champion").version == champion


def test_stopping_and_starting_the_stack_keeps_its_data(stack, tmp_path):
    from mlflow import MlflowClient

    home, env = stack
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    client.create_registered_model("kept-across-restarts")
    (tmp_path / "small.bin").write_bytes(b"kept")
    storage.upload(tmp_path / "small.bin", "s3://tlpipe/tests/restart/small.bin")
    assert tlpipe(home, "stack", "down").returncode == 0
    assert tlpipe(home, "stack", "status").returncode == 2
    restarted = tlpipe(home, "stack", "up")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert env["MLFLOW_TRACKING_URI"] in restarted.stdout  # same addresses as before
    assert storage.list_keys("s3://tlpipe/tests/restart") == ["small.bin"]
    assert client.get_registered_model("kept-across-restarts").name == "kept-across-restarts"


def test_checkpoints_round_trip_through_s3(stack):
    from tlpipe.checkpoint import Checkpoint

    model = torch.nn.Linear(3, 2)
    Checkpoint("s3://tlpipe/tests/checkpoints/run/step", {"model": model}).save(4)
    fresh = torch.nn.Linear(3, 2)
    checkpoint = Checkpoint("s3://tlpipe/tests/checkpoints/run/step", {"model": fresh})
    assert checkpoint.restore() == 4 and torch.equal(fresh.weight, model.weight)
    checkpoint.remove()
    assert Checkpoint("s3://tlpipe/tests/checkpoints/run/step", {"model": fresh}).restore() == 0
