"""The registered MLflow model (models-from-code: nothing is pickled).

`mlflow.pyfunc.load_model("models:/tlpipe@champion").predict(images)` takes images as whole-number
pixels 0-255 (uint8, or the integers a JSON request carries), one H x W x 3 image or a batch N x H x W x
3, of any size, and returns a DataFrame with one row per image: `class_id`, `class` (its name) and
`confidence` (the softmax probability of that class). Resizing and normalisation happen in the model.
Anything else is refused with one sentence (ImagesRefused, HTTP 400 when served).
"""

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel

COLUMNS = ("class_id", "class", "confidence")


class ImagesRefused(MlflowException):
    """Input that is not images, in one sentence. MLflow's scoring server puts the request's data in front
    of the message of an MlflowException raised in predict, every pixel of it; this one keeps its
    sentence, so that a client reads what to fix."""

    def __init__(self, sentence: str):
        self._sentence = sentence
        super().__init__(sentence, error_code=BAD_REQUEST)

    @property
    def message(self) -> str:
        return self._sentence

    @message.setter
    def message(self, _ignored: str) -> None:
        pass


def as_images(model_input) -> np.ndarray:
    """`model_input` as a uint8 batch N x H x W x 3 (a single image gets a batch axis), or ImagesRefused."""
    if hasattr(model_input, "columns"):  # a DataFrame: a table, not pixels
        raise ImagesRefused("expected images as an array of pixels (N x H x W x 3 or H x W x 3), got a table; send "
                            '{"inputs": <nested lists of pixels>} to the server.')
    images = np.asarray(model_input)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ImagesRefused(f"expected RGB images of shape N x H x W x 3 or H x W x 3, got shape {images.shape}.")
    if images.dtype == np.uint8:
        return images if images.flags.writeable else images.copy()  # torch warns on read-only arrays
    if not np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        raise ImagesRefused(f"expected whole-number pixels 0-255 (uint8), got {images.dtype}; an image in [0, 1] "
                            "needs (image * 255).round().astype('uint8').")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise ImagesRefused(f"expected pixels 0-255, got values from {images.min()} to {images.max()}.")
    return images.astype(np.uint8)


class TlpipeClassifier(PythonModel):
    def load_context(self, context):
        from tlpipe.models import load_model

        self.model, self.meta = load_model(context.artifacts["model"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tlpipe.scoring import probabilities

        p = probabilities(self.model, as_images(model_input))
        confidence, ids = p.max(1)
        classes = np.asarray(self.model.spec.classes, dtype=object)
        return pd.DataFrame({"class_id": ids.numpy().astype(np.int64), "class": classes[ids.numpy()],
                             "confidence": confidence.numpy().astype(np.float64)}, columns=list(COLUMNS))


mlflow.models.set_model(TlpipeClassifier())
