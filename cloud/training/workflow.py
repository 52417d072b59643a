"""Train on a data set and register the result: what ``fedge cloud train`` does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cloud.data import Dataset, data_record, load_dataset, stratified_split
from cloud.data.timeseries import Reading
from cloud.registry import ArtifactStatus, Registry, VersionInfo, VersionSource
from cloud.registry.registry import NewArtifact
from cloud.training.distributed import Launch, run_distributed
from cloud.training.models import IMAGE_ARCHS, ModelSpec, default_arch
from cloud.training.prune import prune_and_finetune
from cloud.training.sequence_models import SEQUENCE_ARCHS
from cloud.training.serialize import model_from_bytes, model_to_bytes
from cloud.training.trainer import EpochCallback, TrainConfig, train
from shared.errors import ConfigError


@dataclass(frozen=True)
class TrainRequest:
    """What to train: data source, architecture, model name and hyper-parameters.

    Attributes:
        prune: Fraction of weights to prune after training (then ``prune_epochs`` of
            fine-tuning); None for no pruning.
        launch: ``nproc > 1`` (or several nodes) trains under DDP through torchrun.
        checkpoint_dir: Where a checkpoint is written every epoch.
        resume: Continue from the checkpoint in ``checkpoint_dir``.
    """

    data: str
    arch: str | None = None
    model_name: str | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    width: int | None = None
    prune: float | None = None
    prune_epochs: int = 1
    launch: Launch = field(default_factory=Launch)
    checkpoint_dir: Path | None = None
    resume: bool = False


def reading_for(arch: str | None) -> Reading:
    """How 3-D inputs are read for ``arch``: series for sequence models, one-channel
    grids for image models, the loader's default otherwise."""
    if arch in SEQUENCE_ARCHS:
        return "sequence"
    if arch in IMAGE_ARCHS:
        return "image"
    return "auto"


def describe_reading(dataset: Dataset) -> str:
    """Human words for how the samples were read, stored in the version's metrics."""
    shape = "x".join(str(d) for d in dataset.input_shape)
    if dataset.kind == "sequence":
        return f"sequence (T, F) = {shape}"
    if dataset.kind == "image":
        return f"image (C, H, W) = {shape}"
    return f"features (F,) = {shape}"


def load_for(data: str, arch: str | None) -> tuple[Dataset, Reading, str]:
    """The data set read for ``arch``, the reading used, and the architecture
    (``default_arch`` of the data's shape when ``arch`` is None)."""
    reading = reading_for(arch)
    dataset = load_dataset(data, reading=reading)
    return dataset, reading, arch or default_arch(dataset.input_shape)


def train_and_register(
    registry: Registry, request: TrainRequest, *, on_epoch: EpochCallback | None = None
) -> VersionInfo:
    """Load and split the data, train (optionally distributed, optionally pruned), and
    store the float model as a new version.

    Nothing is written to the registry unless training succeeded.
    """
    dataset, reading, arch = load_for(request.data, request.arch)
    split = stratified_split(dataset, seed=request.config.seed)
    spec = ModelSpec(arch, dataset.input_shape, dataset.num_classes, request.width)
    distributed = request.launch.nproc > 1 or request.launch.nnodes > 1
    if distributed:
        outcome = run_distributed(
            request.data,
            reading,
            spec,
            request.config,
            request.launch,
            checkpoint_dir=request.checkpoint_dir,
            resume=request.resume,
        )
        if outcome.weights is None:
            raise ConfigError(
                f"node {request.launch.node_rank} trained its share; node 0 registers the version"
            )
        model = model_from_bytes(spec, outcome.weights)
        metrics = dict(outcome.metrics)
    else:
        result = train(
            split,
            spec,
            request.config,
            on_epoch=on_epoch,
            checkpoint_dir=request.checkpoint_dir,
            resume=request.resume,
        )
        model, metrics = result.model, dict(result.metrics)
    metrics["input_reading"] = describe_reading(dataset)
    if request.prune is not None:
        before = metrics["test_accuracy"]
        tune = TrainConfig(
            **{
                **request.config.__dict__,
                "epochs": request.prune_epochs,
                "learning_rate": request.config.learning_rate / 4,
            }
        )
        pruned = prune_and_finetune(model.train(), split, spec, request.prune, tune)
        model = pruned.model
        metrics = {
            **metrics,
            **pruned.metrics,
            "unpruned_test_accuracy": before,
            "input_reading": metrics["input_reading"],
        }
    name = request.model_name or f"{arch.replace(':', '-').replace('.', '-')}-{dataset.name}"
    return registry.create_version(
        name,
        spec=spec.to_dict(),
        source=VersionSource.TRAINED,
        data=data_record(request.data, dataset, seed=request.config.seed, reading=reading),
        metrics=metrics,
        artifacts=[NewArtifact("torch", "fp32", model_to_bytes(model), ArtifactStatus.SOURCE)],
    )
