from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def predict(model: str, images: str, experiment: str, publish_to: str, predictions: Output[Dataset],
            metrics: Output[Metrics]):
    """Predicts every PNG and JPEG image of `images` with the registered `model`: `predictions` holds
    predictions.parquet (a row per image: image, folder, class_id, class, confidence, entropy) and
    summary.json (class balance, confidence, entropy; agreement with folders named after classes)."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.predict import predict
    from tlpipe.tracking import current_pipeline_run

    summary = exit_on_user_error(predict)(model, images, predictions.path, experiment, current_pipeline_run(), publish_to)
    for name in ("count", "mean_confidence", "unsure_share", "mean_entropy", "folder_agreement"):
        if getattr(summary, name) is not None:
            metrics.log_metric(name, getattr(summary, name))
    predictions.metadata.update({"model_name": summary.model_name, "version": summary.version, "count": summary.count,
                                 "format": "parquet"})
