"""Knowledge distillation: a compact student learns from a registered teacher.

``fedge cloud distill TEACHER`` rebuilds the teacher from the registry, reloads the exact
data and split it was trained on (its data record), trains the student on
``(1 - alpha) * CE + alpha * T^2 * KL`` (see :func:`cloud.training.trainer.distill_loss`)
and registers the student as a new version whose *parent* is the teacher — the lineage
``fedge models show`` prints. The student is sized from a device class's budget with
``--for-profile`` (:func:`student_width`), or named with ``--student``.

Distillation only helps when the teacher is clearly better than the student can get on its
own; the version's metrics say how far apart they are (``teacher_margin_points``) and, with
``baseline=True``, what the same student reaches from scratch (``distill_gain_points``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cloud.data import split_from_record
from cloud.registry import ArtifactStatus, Registry, VersionInfo, VersionSource
from cloud.registry.registry import NewArtifact
from cloud.training.models import ModelSpec, build_model
from cloud.training.prune import prune_and_finetune
from cloud.training.serialize import model_from_bytes, model_to_bytes
from cloud.training.trainer import EpochCallback, TrainConfig, train
from shared.errors import ConfigError
from shared.profiles import DeviceProfile

#: A teacher this many points better than its student is "clearly better" (the issue's bar).
CLEAR_MARGIN_POINTS = 1.0
#: Width candidates per student family, largest first.
_WIDTHS: dict[str, tuple[int, ...]] = {
    "cnn": (32, 16, 8, 4),
    "gru": (128, 64, 32, 16, 8),
    "lstm": (128, 64, 32, 16, 8),
    "transformer": (64, 32, 16),
    "mlp": (None,),  # type: ignore[dict-item]
}
#: File bytes an int8 graph carries besides its weights (op and tensor tables, scales);
#: measured on the built-in families, rounded up.
GRAPH_OVERHEAD_BYTES = 96 * 1024


def default_student(teacher: ModelSpec) -> str:
    """``cnn`` for image teachers, ``gru`` for sequence teachers, ``mlp`` otherwise."""
    return {3: "cnn", 2: "gru"}.get(len(teacher.input_shape), "mlp")


def estimated_int8_bytes(spec: ModelSpec) -> int:
    """One byte per parameter plus :data:`GRAPH_OVERHEAD_BYTES`: a pre-training estimate;
    the real file is measured after quantization and checked again per device class."""
    return sum(p.numel() for p in build_model(spec).parameters()) + GRAPH_OVERHEAD_BYTES


def student_width(arch: str, teacher: ModelSpec, profile: DeviceProfile) -> int | None:
    """The largest width of ``arch`` whose estimated int8 file fits ``profile``'s
    ``max_model_bytes`` (and, mapped with its arenas, a quarter of its RAM).

    Raises:
        ConfigError: not even the smallest width fits.
    """
    budget = min(profile.max_model_bytes, profile.ram_mb * 1024 * 1024 // 4)
    widths = _WIDTHS.get(arch)
    if widths is None:
        raise ConfigError(f"--for-profile sizes built-in students only, not {arch!r}")
    for width in widths:
        spec = ModelSpec(arch, teacher.input_shape, teacher.num_classes, width)
        if estimated_int8_bytes(spec) <= budget:
            return width
    smallest = ModelSpec(arch, teacher.input_shape, teacher.num_classes, widths[-1])
    raise ConfigError(
        f"no {arch} student fits profile {profile.name}: even the smallest is estimated at "
        f"{estimated_int8_bytes(smallest):,} bytes, the budget is {budget:,}"
    )


@dataclass(frozen=True)
class DistillRequest:
    """What to distill from which teacher."""

    teacher: str
    student: str | None = None
    width: int | None = None
    profile: DeviceProfile | None = None
    model_name: str | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    baseline: bool = False
    prune: float | None = None
    prune_epochs: int = 1


def distill_and_register(
    registry: Registry, request: DistillRequest, *, on_epoch: EpochCallback | None = None
) -> VersionInfo:
    """Train the student against the teacher and register it with the teacher as parent."""
    teacher_version = registry.get_version(request.teacher)
    teacher_spec = ModelSpec.from_dict(teacher_version.spec)
    teacher = model_from_bytes(
        teacher_spec, registry.read_artifact(teacher_version.artifact("torch", "fp32"))
    )
    split = split_from_record(teacher_version.data)
    arch = request.student or default_student(teacher_spec)
    width = request.width
    if request.profile is not None and width is None:
        width = student_width(arch, teacher_spec, request.profile)
    spec = ModelSpec(arch, teacher_spec.input_shape, teacher_spec.num_classes, width)
    build_model(spec)  # refuse a student that cannot take the teacher's inputs, early
    result = train(split, spec, request.config, on_epoch=on_epoch, teacher=teacher)
    model = result.model
    teacher_acc = float(teacher_version.metrics.get("test_accuracy", float("nan")))
    student_acc = float(result.metrics["test_accuracy"])
    metrics: dict[str, Any] = {
        **result.metrics,
        "distilled_from": teacher_version.ref,
        "teacher_test_accuracy": teacher_acc,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "temperature": request.config.temperature,
        "distill_alpha": request.config.distill_alpha,
        "teacher_margin_points": round((teacher_acc - student_acc) * 100, 3),
        "teacher_clearly_better": (teacher_acc - student_acc) * 100 >= CLEAR_MARGIN_POINTS,
    }
    if request.profile is not None:
        metrics["sized_for_profile"] = request.profile.name
        metrics["estimated_int8_bytes"] = estimated_int8_bytes(spec)
    if request.baseline:
        scratch = train(split, spec, request.config)
        scratch_acc = float(scratch.metrics["test_accuracy"])
        metrics["scratch_test_accuracy"] = scratch_acc
        metrics["distill_gain_points"] = round((student_acc - scratch_acc) * 100, 3)
        metrics["teacher_clearly_better"] = (teacher_acc - scratch_acc) * 100 >= (
            CLEAR_MARGIN_POINTS
        )
    if request.prune is not None:
        tune = replace(
            request.config,
            epochs=request.prune_epochs,
            learning_rate=request.config.learning_rate / 4,
        )
        pruned = prune_and_finetune(model.train(), split, spec, request.prune, tune)
        model = pruned.model
        metrics.update(
            prune_amount=request.prune,
            sparsity=round(pruned.sparsity, 6),
            unpruned_test_accuracy=student_acc,
            test_accuracy=pruned.metrics["test_accuracy"],
        )
    default_name = f"{arch}-{teacher_version.model}-student"
    if request.profile is not None:
        default_name += f"-{request.profile.name}"
    return registry.create_version(
        request.model_name or default_name,
        spec=spec.to_dict(),
        source=VersionSource.TRAINED,
        parent=teacher_version.ref,
        data=teacher_version.data,
        metrics=metrics,
        artifacts=[NewArtifact("torch", "fp32", model_to_bytes(model), ArtifactStatus.SOURCE)],
    )
