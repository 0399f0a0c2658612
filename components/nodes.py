"""The training components as launchers of multi-node Kubeflow Trainer jobs (`tlpipe compile --nodes N`).

Each takes its one-node component's parameters, plus how many nodes and where they come from, and runs
tlpipe.trainjob.run_on_nodes: the training itself happens in the TrainJob's pods. The task's GPUs, CPU and
memory, node selector, tolerations, affinity and volumes (/dev/shm) pass through to those pods
(task_config_passthroughs) rather than to the launcher's own pod; its env is applied to both.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output, TaskConfig, TaskConfigField, TaskConfigPassthrough

from tlpipe.cluster import CPU_IMAGE

PASSTHROUGHS = [
    TaskConfigField.RESOURCES,
    TaskConfigField.KUBERNETES_NODE_SELECTOR,
    TaskConfigField.KUBERNETES_TOLERATIONS,
    TaskConfigField.KUBERNETES_AFFINITY,
    TaskConfigField.KUBERNETES_VOLUMES,
    TaskConfigPassthrough(field=TaskConfigField.ENV, apply_to_task=True),
]


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, task_config_passthroughs=PASSTHROUGHS)
def pretrain_on_nodes(
    source_train: Input[Dataset],
    source_val: Input[Dataset],
    backbone: str,
    pretrained_weights: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    source_augment: str,
    experiment: str,
    model: Output[Model],
    task_config: TaskConfig,
    nodes: int = 2,
    node_image: str = "",
    trainer_runtime: str = "torch-distributed",
    s3_secret: str = "tlpipe-s3",
    mlflow_secret: str = "tlpipe-mlflow",
):
    """Pretrain on `nodes` nodes as a Kubeflow Trainer job on the `trainer_runtime` ClusterTrainingRuntime,
    in node_image; the parameters are pretrain's (components/pretrain.py)."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.trainjob import run_on_nodes

    model.metadata.update(exit_on_user_error(run_on_nodes)("pretrain", locals()))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, task_config_passthroughs=PASSTHROUGHS)
def finetune_on_nodes(
    source_model: Input[Model],
    target_labelled: Input[Dataset],
    target_val: Input[Dataset],
    strategy: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    experiment: str,
    step_name: str,
    model: Output[Model],
    task_config: TaskConfig,
    source_train: Input[Dataset] = None,
    augment: str = "auto",
    backbone_lr: float = 0.1,
    nodes: int = 2,
    node_image: str = "",
    trainer_runtime: str = "torch-distributed",
    s3_secret: str = "tlpipe-s3",
    mlflow_secret: str = "tlpipe-mlflow",
):
    """Finetune on `nodes` nodes as a Kubeflow Trainer job on the `trainer_runtime` ClusterTrainingRuntime,
    in node_image; the parameters are finetune's (components/finetune.py)."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.trainjob import run_on_nodes

    model.metadata.update(exit_on_user_error(run_on_nodes)("finetune", locals()))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, task_config_passthroughs=PASSTHROUGHS)
def adapt_on_nodes(
    source_model: Input[Model],
    source_train: Input[Dataset],
    target_unlabelled: Input[Dataset],
    target_labelled: Input[Dataset],
    target_val: Input[Dataset],
    method: str,
    epochs: int,
    finetune_epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    checkpoint_root: str,
    checkpoint_every: int,
    nproc: int,
    source_augment: str,
    experiment: str,
    model: Output[Model],
    task_config: TaskConfig,
    bottleneck: int = -1,
    backbone_lr: float = -1.0,
    sdat_rho: float = 0.02,
    target_augment: str = "auto",
    finetune_backbone_lr: float = 0.1,
    pretrained_weights: str = "",
    nodes: int = 2,
    node_image: str = "",
    trainer_runtime: str = "torch-distributed",
    s3_secret: str = "tlpipe-s3",
    mlflow_secret: str = "tlpipe-mlflow",
):
    """Adapt on `nodes` nodes as a Kubeflow Trainer job on the `trainer_runtime` ClusterTrainingRuntime,
    in node_image; the parameters are adapt's (components/adapt.py)."""
    from tlpipe.errors import exit_on_user_error
    from tlpipe.trainjob import run_on_nodes

    model.metadata.update(exit_on_user_error(run_on_nodes)("adapt", locals()))


# By the one-node component's name: what tlpipe.cluster.Placement trains with on several nodes.
LAUNCHERS = {"pretrain": pretrain_on_nodes, "finetune": finetune_on_nodes, "adapt": adapt_on_nodes}
