from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def layer_transfer(
    source_model: Input[Model],
    target_labelled: Input[Dataset],
    target_test: Input[Dataset],
    blocks: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    experiment: str,
    point: Output[Artifact],
):
    """Copies the first `blocks` blocks of the source model, frozen and (separately) fine-tuned, trains the
    rest on the labelled target images and scores both on the target test split."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.layers import layer_transfer
    from tlpipe.tracking import current_pipeline_run
    from tlpipe.train import TrainConfig

    config = TrainConfig.from_step(locals())
    rows = exit_on_user_error(layer_transfer)(
        source_model.path, target_labelled.path, target_test.path, point.path, blocks, config, experiment, current_pipeline_run(),
    )
    point.metadata.update({"blocks": blocks, **{r["mode"]: r["accuracy"] for r in rows}})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def layer_sweep_report(
    points: Input[List[Artifact]],
    experiment: str,
    sweep: Output[Artifact],
    report: Output[HTML],
):
    """One table and one plot of target accuracy against the number of blocks copied."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.steps.layers import layer_sweep_report
    from tlpipe.tracking import current_pipeline_run

    exit_on_user_error(layer_sweep_report)([p.path for p in points], sweep.path, report.path, experiment,
                                                 current_pipeline_run())
