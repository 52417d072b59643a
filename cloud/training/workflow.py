"""Train on a data set and register the result: what ``fedge cloud train`` does."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloud.data import data_record, load_dataset, stratified_split
from cloud.registry import ArtifactStatus, Registry, VersionInfo, VersionSource
from cloud.registry.registry import NewArtifact
from cloud.training.models import ModelSpec, default_arch
from cloud.training.serialize import model_to_bytes
from cloud.training.trainer import EpochCallback, TrainConfig, train


@dataclass(frozen=True)
class TrainRequest:
    """What to train: data source, architecture, model name and hyper-parameters."""

    data: str
    arch: str | None = None
    model_name: str | None = None
    config: TrainConfig = field(default_factory=TrainConfig)


def train_and_register(
    registry: Registry, request: TrainRequest, *, on_epoch: EpochCallback | None = None
) -> VersionInfo:
    """Load and split the data, train, and store the float model as a new version.

    Nothing is written to the registry unless training succeeded.
    """
    dataset = load_dataset(request.data)
    split = stratified_split(dataset, seed=request.config.seed)
    arch = request.arch or default_arch(dataset.input_shape)
    spec = ModelSpec(arch, dataset.input_shape, dataset.num_classes)
    result = train(split, spec, request.config, on_epoch=on_epoch)
    name = request.model_name or f"{arch.replace(':', '-').replace('.', '-')}-{dataset.name}"
    return registry.create_version(
        name,
        spec=spec.to_dict(),
        source=VersionSource.TRAINED,
        data=data_record(request.data, dataset, seed=request.config.seed),
        metrics=dict(result.metrics),
        artifacts=[
            NewArtifact("torch", "fp32", model_to_bytes(result.model), ArtifactStatus.SOURCE)
        ],
    )
