from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    source: str,
    target: str,
    target_labels_per_class: int,
    target_val_per_class: int,
    seed: int,
    image_size: int,
    experiment: str,
    pipeline_run: str,
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
    stable identity and the seed (unseen classes only in the test splits)."""
    from tlpipe import steps
    from tlpipe.errors import exit_on_user_error

    outputs = {
        "source_train": source_train,
        "source_val": source_val,
        "source_test": source_test,
        "target_labelled": target_labelled,
        "target_val": target_val,
        "target_unlabelled": target_unlabelled,
        "target_test": target_test,
    }
    facts = exit_on_user_error(steps.ingest)(
        source, target, target_labels_per_class, seed, image_size,
        out={name: artifact.path for name, artifact in outputs.items()},
        experiment=experiment, pipeline_run=pipeline_run, publish_to=publish_to, unseen_classes=unseen_classes,
        attributes=attributes, target_val_per_class=target_val_per_class,
    )
    for name, artifact in outputs.items():
        artifact.metadata.update(facts[name])
