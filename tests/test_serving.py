"""The registered model as its users call it: in process through pyfunc, and served by `mlflow models
serve` (the real server): class ids with their names and confidences, and one short sentence for input
that is not images."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import mlflow
import numpy as np
import pytest
import torch
from helpers import free_port
from mlflow.exceptions import MlflowException

from tlpipe import registry, settings, tracking
from tlpipe.models import Classifier, ModelSpec, save_model
from tlpipe.serving import ImagesRefused, as_images

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def champion(tlpipe_home, tmp_path):
    """A small model registered as the champion of 'served' in the embedded default."""
    torch.manual_seed(0)
    save_model(tmp_path / "model", Classifier(ModelSpec("small-cnn", CLASSES, 16)))
    client = tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id(client, "serving")):
        registry.log_and_register(tmp_path / "model", "served", {tracking.PIPELINE_RUN_TAG: "run-served"})
    client.set_registered_model_alias("served", "champion", "1")
    return "models:/served@champion"


@pytest.mark.parametrize("given, refusal", [
    (np.zeros((2, 8, 8, 3), np.float32), "expected whole-number pixels 0-255 (uint8), got float32; an image in [0, 1]"),
    (np.zeros((8, 8), np.uint8), "expected RGB images of shape N x H x W x 3 or H x W x 3, got shape (8, 8)"),
    (np.zeros((2, 8, 8, 4), np.uint8), "got shape (2, 8, 8, 4)"),
    (np.full((1, 8, 8, 3), 300, np.int64), "expected pixels 0-255, got values from 300 to 300"),
    (np.zeros((1, 8, 8, 3), bool), "got bool"),
])
def test_input_that_is_not_images_is_refused_in_one_short_sentence(given, refusal):
    with pytest.raises(ImagesRefused) as refused:
        as_images(given)
    assert refusal in refused.value.message and len(refused.value.message) < 200
    assert refused.value.get_http_status_code() == 400
    refused.value.message = f"Failed to predict data '{given}'"  # what the scoring server does to the message
    assert refusal in refused.value.message


def test_a_single_image_json_integers_and_read_only_arrays_are_images():
    one = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert as_images(one).shape == (1, 8, 8, 3)
    assert as_images(one.astype(np.int64)).dtype == np.uint8  # what a JSON request's nested lists become
    frozen = np.stack([one, one])
    frozen.flags.writeable = False  # as np.asarray(PIL image) gives
    assert as_images(frozen).flags.writeable


def test_the_champion_predicts_class_names_and_confidences_in_process(champion):
    model = mlflow.pyfunc.load_model(champion)
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "The given NumPy array is not writable"
        predicted = model.predict(images)
    assert list(predicted.columns) == ["class_id", "class", "confidence"] and len(predicted) == 5
    assert (predicted["class"] == [CLASSES[i] for i in predicted["class_id"]]).all()
    assert ((predicted["confidence"] >= 1 / 3) & (predicted["confidence"] <= 1)).all()
    assert model.predict(images[0]).iloc[0].to_dict() == predicted.iloc[0].to_dict()  # one image, the same answer
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["class_id", "class", "confidence"]
    with pytest.raises(MlflowException, match="got float64"):  # ImagesRefused, loaded from the model's code
        model.predict(images / 255.0)


@pytest.mark.slow  # a fresh Python process
def test_a_fresh_process_serves_from_the_code_logged_with_the_model(champion):
    """The model carries tlpipe's code: a new process imports every tlpipe module it uses from the model's
    code folder, not from the tlpipe installed here."""
    code = f"""
import json, sys, mlflow, numpy as np
mlflow.set_tracking_uri({settings.tracking_uri()!r})
print(len(mlflow.pyfunc.load_model({champion!r}).predict(np.zeros((2, 16, 16, 3), np.uint8))))
print(json.dumps({{name: module.__file__ for name, module in sys.modules.items() if name.startswith("tlpipe")}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted, modules = result.stdout.splitlines()[-2:]
    modules = json.loads(modules)
    assert predicted == "2" and {"tlpipe.models", "tlpipe.scoring"} <= set(modules)
    assert all("/artifacts/code/tlpipe/" in path for path in modules.values()), modules


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow  # starts MLflow's scoring server
def test_mlflow_models_serve_answers_with_class_names_and_refuses_floats_in_a_sentence(champion, tmp_path):
    """The README's command: `mlflow models serve -m models:/<name>@champion` with the environment's bin
    folder on PATH (MLflow starts the server as `uvicorn` from there)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri(),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", champion, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "serve.log", "wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        images = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
        status, answer = _post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == 2 and all(set(row) == {"class_id", "class", "confidence"} for row in rows)
        assert all(row["class"] == CLASSES[row["class_id"]] for row in rows)
        status, single = _post(f"{url}/invocations", {"inputs": images[1].tolist()})
        assert status == 200 and single["predictions"] == rows[1:]
        status, refused = _post(f"{url}/invocations", {"inputs": (images / 255).tolist()})
        assert status == 400 and refused["error_code"] == "BAD_REQUEST"
        assert refused["message"].startswith("expected whole-number pixels 0-255 (uint8), got float64")
        assert len(refused["message"]) < 200  # no pixels dumped into it
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
