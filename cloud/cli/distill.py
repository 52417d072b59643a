"""``fedge cloud distill`` (teacher → student, then quantize) and ``fedge cloud fit``
(which variant each device class gets, or why none)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cloud.cli.common import (
    JsonFlag,
    cli_errors,
    emit_json,
    err_console,
    open_registry,
    out_console,
)
from shared.errors import ConfigError

ProfilesOption = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDGE_PROFILES",
        help="Directory of device profiles (*.toml); default ./firmware_configs.",
    ),
]


def _load_profiles(directory: Path | None) -> list[Any]:
    from shared.profiles import profile_from_toml

    directory = directory or Path("firmware_configs")
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no profile directory (pass --profiles)")
    return [
        profile_from_toml(p.read_text(), source=str(p)) for p in sorted(directory.glob("*.toml"))
    ]


def distill_cmd(
    teacher: Annotated[str, typer.Argument(help="Teacher version, MODEL@N or MODEL.")],
    student: Annotated[
        str | None, typer.Option(help="Student family (default cnn for images, gru for series).")
    ] = None,
    for_profile: Annotated[
        str | None,
        typer.Option(help="Size the student for this device profile's budgets (by name)."),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="Student width (overrides sizing).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry name of the student.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 2e-3,
    temperature: Annotated[float, typer.Option(min=0.1, help="Softmax temperature T.")] = 4.0,
    alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Weight of the KL term (1-alpha on CE).")
    ] = 0.7,
    seed: Annotated[int, typer.Option()] = 0,
    baseline: Annotated[
        bool, typer.Option(help="Also train the student from scratch and report the gain.")
    ] = False,
    prune: Annotated[float | None, typer.Option(help="Prune this fraction, fine-tune.")] = None,
    quantize: Annotated[
        bool, typer.Option(help="Run the quantize pipeline on the student.")
    ] = True,
    profiles: ProfilesOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Distill TEACHER into a compact student (CE + KL at temperature T), registered with
    the teacher as its parent; then quantize it as `fedge cloud quantize` does."""
    from cloud.quantization import quantize_version
    from cloud.training import TrainConfig
    from cloud.training.distill import DistillRequest, distill_and_register

    with cli_errors():
        profile = None
        if for_profile is not None:
            found = [p for p in _load_profiles(profiles) if p.name == for_profile]
            if not found:
                raise ConfigError(f"no profile named {for_profile!r} in the profile directory")
            profile = found[0]
        request = DistillRequest(
            teacher=teacher,
            student=student,
            width=width,
            profile=profile,
            model_name=name,
            config=TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=lr,
                seed=seed,
                temperature=temperature,
                distill_alpha=alpha,
            ),
            baseline=baseline,
            prune=prune,
        )
        registry = open_registry()
        try:
            with err_console.status("distilling"):
                version = distill_and_register(registry, request)
            report = None
            if quantize:
                with err_console.status("quantizing the student"):
                    report = quantize_version(registry, version.ref)
        finally:
            registry.close()
    m = version.metrics
    payload: dict[str, Any] = {"version": version.ref, "parent": version.parent, **m}
    if report is not None:
        payload["quantization"] = report.to_dict()
    if json_out:
        emit_json(payload)
        return
    out_console.print(
        f"registered [bold]{version.ref}[/] (parent {version.parent}): student "
        f"{m['test_accuracy']:.2%} with {m['parameters']:,} parameters; teacher "
        f"{m['teacher_test_accuracy']:.2%} with {m['teacher_parameters']:,}"
    )
    if "distill_gain_points" in m:
        out_console.print(
            f"from scratch the same student reaches {m['scratch_test_accuracy']:.2%}: "
            f"distillation {m['distill_gain_points']:+.2f} points"
        )
    if not m["teacher_clearly_better"]:
        err_console.print(
            "[yellow]note:[/] the teacher is not at least 1 point better than the student; "
            "distillation cannot be expected to help here"
        )
    if report is not None:
        out_console.print(f"quantized: deployable {report.selected or 'none'}")


def fit_cmd(
    versions: Annotated[list[str], typer.Argument(help="Candidate versions (teacher, students).")],
    profiles: ProfilesOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Per device class: the most accurate candidate with an approved variant inside the
    class's budgets (bytes, RAM, latency target), or the reason nothing fits."""
    from cloud.quantization.device_fit import plan_classes

    with cli_errors():
        loaded = _load_profiles(profiles)
        registry = open_registry()
        try:
            plans = plan_classes(registry, versions, loaded)
        finally:
            registry.close()
    if json_out:
        emit_json([p.to_dict() for p in plans])
        return
    table = Table(title="device classes")
    for col in ("profile", "version", "precision", "bytes", "accuracy", "reason"):
        table.add_column(col)
    for plan in plans:
        c = plan.chosen
        table.add_row(
            plan.profile,
            c.version if c else "-",
            c.precision if c else "-",
            f"{c.bytes:,}" if c else "-",
            f"{c.accuracy:.2%}" if c else "-",
            plan.reason or "",
        )
    out_console.print(table)


def register(cloud_app: typer.Typer) -> None:
    """Add ``distill`` and ``fit`` to the ``fedge cloud`` app."""
    cloud_app.command("distill")(distill_cmd)
    cloud_app.command("fit")(fit_cmd)
