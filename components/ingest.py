from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_version(source: str, target: str, attributes: str) -> str:
    """What ingest would read now: built-in domains by tlpipe's version, folders (local or S3) by their
    listing. Never cached itself; ingest is cached on its answer, so a rerun on unchanged data reuses the
    splits and every training step after them, and a changed folder misses the cache."""
    from tlpipe.data.spec import data_versions
    from tlpipe.errors import exit_on_user_error

    return exit_on_user_error(data_versions)(source, target, attributes)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    data_version: str,
    source: str,
    target: str,
    target_labels_per_class: int,
    target_val_per_class: int,
    seed: int,
    image_size: int,
    experiment: str,
    publish_to: str,
    unseen_classes: str,
    attributes: str,
    source_train: Output[Dataset],
    source_val: Output[Dataset],
    source_test: Output[Dataset],
    target_labelled: Output[Dataset],
    target_val: Output[Dataset],
    target_unlabelled: Output[Dataset],
    target_test: Output[Dataset],
):
    """Resolves and validates both domains and writes the seven disjoint splits, decided by each image's
    stable identity and the seed (unseen classes only in the test splits). `data_version` (the
    data_version step's answer) is what makes caching ingest safe: the cache key changes with the data."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.common import SPLITS
    from tlpipe.steps.ingest import ingest
    from tlpipe.tracking import current_pipeline_run

    given = locals()
    outputs = {name: given[name] for name in SPLITS}  # KFP needs the outputs named in the signature
    facts = exit_on_user_error(ingest)(
        source, target, target_labels_per_class, seed, image_size,
        out={name: artifact.path for name, artifact in outputs.items()},
        experiment=experiment, pipeline_run=current_pipeline_run(), publish_to=publish_to, unseen_classes=unseen_classes,
        attributes=attributes, target_val_per_class=target_val_per_class, data_version=data_version,
    )
    for name, artifact in outputs.items():
        artifact.metadata.update(facts[name])
