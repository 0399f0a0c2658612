"""The registered MLflow model (models-from-code: nothing is pickled).

`mlflow.pyfunc.load_model("models:/tlpipe@champion").predict(images)` takes uint8 images
(N, H, W, 3) of any size and returns class ids; resizing and normalisation happen in the model.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class TlpipeClassifier(PythonModel):
    def load_context(self, context):
        from tlpipe.models import load_model

        self.model, self.meta = load_model(context.artifacts["model"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        from tlpipe.scoring import predict

        images = np.asarray(model_input)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.shape}")
        return predict(self.model, images.astype(np.uint8, copy=False)).numpy()


mlflow.models.set_model(TlpipeClassifier())
