"""Dataset splits as MLflow lists them among a run's inputs, and the hashes ingest recorded."""

import json
import warnings
from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset

from tlpipe.tracking.runs import _runs, configure


class SplitDataset(MetaDataset):
    """A dataset split as MLflow lists it among a run's inputs: no data, its name, where it lies, the
    content hash ingest computed as the digest (its first 32 hex digits: MLflow keeps 36 characters),
    and its counts as the profile."""

    def __init__(self, meta: dict, location: str):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        self.meta = meta
        digest = meta["content_hash"].split(":")[-1][:32]
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so for every path
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            source = resolve_dataset_source(artifact_uri(location))
        self.split = meta.get("split") or Path(location).name
        super().__init__(source, name=f"{meta.get('spec', '')}/{self.split}", digest=digest)

    @property
    def profile(self) -> dict:
        return {"images": self.meta["count"], "classes": len(self.meta["classes"]),
                "labelled": self.meta["labelled"], "content_hash": self.meta["content_hash"]}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_splits_to_parent(parent: str, splits: list[SplitDataset]) -> None:
    """Lists the pipeline run's splits among its parent run's datasets too (context: the split)."""
    from mlflow.entities import DatasetInput, InputTag

    configure().log_inputs(parent, datasets=[
        DatasetInput(split._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split.split)])
        for split in splits])


def artifact_uri(path: str) -> str:
    """The URI of a KFP artifact from the path a component sees (KFP mounts s3://b/k at /s3/b/k)."""
    for mount, scheme in (("/s3/", "s3://"), ("/minio/", "s3://"), ("/gcs/", "gs://")):
        if str(path).startswith(mount):
            return scheme + str(path)[len(mount):]
    return str(Path(path).resolve())


def log_split(meta: dict, location: str, context: str) -> SplitDataset:
    """Lists a dataset split among the active run's inputs (`context`: training, validation, test, ...)."""
    dataset = SplitDataset(meta, location)
    mlflow.log_input(dataset, context=context, tags={"split": dataset.split, "images": str(meta["count"])})
    return dataset


def dataset_hashes(experiment: str, pipeline_run: str) -> dict[str, str]:
    """The dataset hashes ingest tagged on its run (none when this pipeline run reused ingest from the cache)."""
    hashes: dict[str, str] = {}
    for run in _runs(configure(), experiment, pipeline_run, "step"):
        hashes.update({k: v for k, v in run.data.tags.items() if k.startswith("tlpipe.hash.")})
    return hashes
