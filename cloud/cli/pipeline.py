"""``fedge cloud …`` and ``fedge models …``: train, quantize, inspect the registry.

Heavy imports (torch, litert-torch) happen inside commands, so ``fedge --help`` is instant
and an edge-only install can still run ``fedge edge …``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

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
from cloud.cli.remote import ApiOption, TokenOption, client_for
from cloud.config import Settings
from shared.errors import ProtocolError

log = logging.getLogger(__name__)

cloud_app = typer.Typer(
    help="Coordinator: train, quantize and federate models.", no_args_is_help=True
)
models_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)

T = TypeVar("T")


def _with_registry(fn: Callable[[Any], T]) -> T:
    registry = open_registry()
    try:
        return fn(registry)
    finally:
        registry.close()


@cloud_app.command("train")
def train_cmd(
    data: Annotated[
        str,
        typer.Option(
            help="mnist-5k, digits, aeon:NAME (a bundled time-series set, e.g. "
            "aeon:BasicMotions), or PATH.npz with arrays x, y ((N,T,F) for series)."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="cnn, resnet, mlp, gru, lstm, transformer, or module:function returning "
            "an nn.Module. (N,T,F) data is read as sequences for gru/lstm/transformer and "
            "as one-channel T x F images for cnn/resnet."
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="Size of a built-in family (channels/hidden units).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registry model name (default ARCH-DATA).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 12,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 2e-3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the split and the weights.")] = 0,
    accumulate: Annotated[
        int, typer.Option(min=1, help="Micro-batches per optimizer step (gradient accumulation).")
    ] = 1,
    prune: Annotated[
        float | None,
        typer.Option(help="Prune this fraction of weights (global magnitude), then fine-tune."),
    ] = None,
    prune_epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs after pruning.")] = 1,
    nproc: Annotated[
        int,
        typer.Option(min=1, envvar="FEDGE_NPROC", help="Processes per node (DDP via torchrun)."),
    ] = 1,
    nnodes: Annotated[int, typer.Option(min=1, envvar="FEDGE_NNODES")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, envvar="FEDGE_NODE_RANK")] = 0,
    master_addr: Annotated[
        str | None, typer.Option(envvar="FEDGE_MASTER_ADDR", help="Node 0's address (multi-node).")
    ] = None,
    master_port: Annotated[int, typer.Option(envvar="FEDGE_MASTER_PORT")] = 29500,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(envvar="FEDGE_CHECKPOINT_DIR", help="Write a checkpoint every epoch here."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the checkpoint in --checkpoint-dir.")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Train a model on a data set and store it in the registry as a new version.

    With --nproc N (and --nnodes/--node-rank/--master-addr/--master-port on several
    nodes) training runs under DistributedDataParallel through torchrun: NCCL on GPUs,
    gloo on CPU; --batch-size is the global batch.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cloud.training import TrainConfig
    from cloud.training.distributed import Launch
    from cloud.training.trainer import DeviceChoice
    from cloud.training.workflow import TrainRequest, train_and_register

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: use auto, cpu or cuda", param_hint="--device")
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        device=cast(DeviceChoice, device),
        seed=seed,
        accumulate=accumulate,
    )
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port)
    if resume and checkpoint_dir is None:
        raise typer.BadParameter("--resume needs --checkpoint-dir", param_hint="--resume")
    with (
        cli_errors(),
        Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} epochs"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=json_out,
        ) as progress,
    ):
        task = progress.add_task("train", total=epochs, loss="-")

        def on_epoch(epoch: int, total: int, loss: float) -> None:
            progress.update(task, completed=epoch, loss=f"{loss:.4f}")

        request = TrainRequest(
            data=data,
            arch=model,
            model_name=name,
            config=config,
            width=width,
            prune=prune,
            prune_epochs=prune_epochs,
            launch=launch,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
        version = _with_registry(lambda reg: train_and_register(reg, request, on_epoch=on_epoch))
    m = version.metrics
    if json_out:
        emit_json({"model": version.model, "version": version.ref, **m})
        return
    out_console.print(
        f"registered [bold]{version.ref}[/]: test accuracy {m['test_accuracy']:.2%}, "
        f"train accuracy {m['train_accuracy']:.2%}, {m['seconds']:.1f}s on {m['device']}"
        f" x{m.get('world_size', 1)}; input read as {m.get('input_reading', '?')}"
    )
    if "sparsity" in m:
        out_console.print(
            f"pruned to sparsity {m['sparsity']:.1%} "
            f"(accuracy before pruning {m['unpruned_test_accuracy']:.2%})"
        )


@cloud_app.command("quantize")
def quantize_cmd(
    version: Annotated[str, typer.Argument(help="MODEL@N, or MODEL for its latest version.")],
    max_drop: Annotated[
        float | None,
        typer.Option(help="Accuracy budget in points (default 1.0 or FEDGE_MAX_ACCURACY_DROP)."),
    ] = None,
    calibration_samples: Annotated[int, typer.Option(min=1)] = 256,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--nchw",
            envvar="FEDGE_CHANNELS_LAST",
            help="Image models take NHWC input (no TRANSPOSE at the graph's input); "
            "--nchw keeps torch's layout. Default: the parent version's layout, else NHWC.",
        ),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDGE_PROFILES",
            help="Directory of device profiles (*.toml) to check the approved artifacts "
            "against (default: ./firmware_configs when present).",
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Convert to TFLite, quantize (int8, dynamic-int8, float16, float32), verify in LiteRT.

    Every precision within the budget is approved; the publisher sends each device the
    smallest approved artifact its profile accepts. Profiles no approved artifact serves
    are named here, before anything is sent.
    """
    from cloud.quantization import quantize_version
    from cloud.quantization.pipeline import profile_coverage
    from shared.profiles import profile_from_toml

    settings = Settings()
    budget = settings.max_accuracy_drop if max_drop is None else max_drop
    with cli_errors(), err_console.status("quantizing") as status:
        report = _with_registry(
            lambda reg: quantize_version(
                reg,
                version,
                max_drop=budget,
                calibration_samples=calibration_samples,
                channels_last=channels_last,
                on_step=lambda msg: status.update(msg),
            )
        )
    shipped = Path("firmware_configs")
    directory = profiles or (shipped if shipped.is_dir() else None)
    from cloud.quantization.device_fit import plan_classes

    accepted: dict[str, list[str]] = {}
    loaded = []
    if directory is not None:
        with cli_errors():
            for path in sorted(directory.glob("*.toml")):
                profile = profile_from_toml(path.read_text(), source=str(path))
                accepted[profile.name] = [str(p) for p in profile.precisions]
                loaded.append(profile)
    coverage = profile_coverage(report, accepted)
    # Precision is not enough: an accepted precision can still exceed a class's budgets.
    with cli_errors():
        fits = _with_registry(lambda reg: plan_classes(reg, [report.version], loaded))
    if json_out:
        emit_json(
            report.to_dict()
            | {"profile_coverage": coverage, "device_fit": [f.to_dict() for f in fits]}
        )
        return
    table = Table(
        title=f"{report.version}: float accuracy {report.float_accuracy:.2%}, "
        f"budget {report.max_drop:.2f} points"
    )
    for col in ("precision", "status", "accuracy", "bytes", "wire bytes", "median ms", "reason"):
        table.add_column(col)
    for art in report.artifacts:
        met = art["metrics"]
        table.add_row(
            art["precision"],
            art["status"],
            f"{met['accuracy']:.2%}",
            f"{art['bytes']:,}",
            f"{met['wire_bytes']:,}" if "wire_bytes" in met else "",
            f"{met['latency_median_ms']:.3f}",
            art["reason"] or "",
        )
    for att in report.attempts:
        if att.outcome == "failed":
            table.add_row(att.precision, "failed", "", "", "", "", att.reason or "")
    out_console.print(table)
    out_console.print(f"deployable: [bold]{report.selected or 'none'}[/]")
    for name, precision in coverage.items():
        if precision is None:
            err_console.print(
                f"[yellow]warning:[/] no approved artifact for profile {name} "
                f"(accepts {', '.join(accepted[name])}): its devices will be refused "
                "with precision_not_accepted"
            )
        else:
            out_console.print(f"profile {name}: {precision}")
    for fit in fits:
        if fit.chosen is None:
            err_console.print(f"[yellow]warning:[/] device class {fit.profile}: {fit.reason}")


@models_app.command("list")
def models_list(
    model: Annotated[str | None, typer.Option(help="Only versions of this model.")] = None,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """List model versions with their accuracy and artifacts."""
    if api:
        _remote_models_list(api, token, model, json_out)
        return
    with cli_errors():
        versions = _with_registry(lambda reg: reg.list_versions(model))
    if json_out:
        emit_json([v.to_dict() for v in versions])
        return
    table = Table(title="model versions")
    for col in ("version", "source", "parent", "test accuracy", "artifacts", "created"):
        table.add_column(col)
    for v in versions:
        acc = v.metrics.get("test_accuracy")
        arts = ", ".join(f"{a.precision}:{a.status}" for a in v.artifacts if a.format == "tflite")
        table.add_row(
            v.ref,
            v.source,
            v.parent or "",
            f"{acc:.2%}" if acc is not None else "",
            arts or "not quantized",
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out_console.print(table)


def _remote_models_list(api: str, token: str | None, model: str | None, json_out: bool) -> None:
    """``models list --api``: ``GET /v1/models``, printed like the local listing.

    The JSON is the API's ``VersionOut`` list, each with ``version`` (= ``ref``) as in the
    local listing.
    """
    with cli_errors():
        answer = client_for(api, token).get("/v1/models", {"model": model})
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise ProtocolError(f"GET /v1/models: expected a version list, got {answer!r:.80}")
        versions: list[dict[str, Any]] = [
            {**v, "version": v.get("ref")} for v in answer["items"] if isinstance(v, dict)
        ]
    if json_out:
        emit_json(versions)
        return
    table = Table(title="model versions")
    for col in ("version", "source", "parent", "test accuracy", "artifacts", "created"):
        table.add_column(col)
    for v in versions:
        acc = (v.get("metrics") or {}).get("test_accuracy")
        arts = ", ".join(
            f"{a['precision']}:{a['status']}"
            for a in v.get("artifacts") or []
            if a.get("format") == "tflite"
        )
        try:
            created = datetime.fromisoformat(str(v.get("created_at"))).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            created = str(v.get("created_at") or "")
        table.add_row(
            str(v.get("ref")),
            str(v.get("source") or ""),
            v.get("parent") or "",
            f"{acc:.2%}" if isinstance(acc, int | float) else "",
            arts or "not quantized",
            created,
        )
    out_console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="MODEL@N, or MODEL for its latest version.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one version: lineage, data, metrics and artifacts."""
    with cli_errors():
        info = _with_registry(lambda reg: reg.get_version(version))
    if json_out:
        emit_json(info.to_dict())
        return
    out_console.print(
        f"[bold]{info.ref}[/]  source={info.source}  parent={info.parent or '-'}"
        f"  created={info.created_at:%Y-%m-%d %H:%M:%S}"
    )
    out_console.print(f"spec: {info.spec}")
    out_console.print(
        f"data: {info.data.get('source')} ({info.data.get('samples')} samples, "
        f"seed {info.data.get('seed')})"
    )
    shown = {k: v for k, v in info.metrics.items() if k != "quantization"}
    out_console.print(f"metrics: {shown}")
    table = Table(title="artifacts")
    for col in ("format", "precision", "status", "accuracy", "bytes", "sha256", "reason"):
        table.add_column(col)
    for a in info.artifacts:
        acc = a.metrics.get("accuracy")
        table.add_row(
            a.format,
            a.precision,
            a.status,
            f"{acc:.2%}" if acc is not None else "",
            f"{a.bytes:,}",
            a.sha256[:16],
            a.reason or "",
        )
    out_console.print(table)


# Registered here so ``fedge cloud distill|fit`` exist wherever this app is mounted.
from cloud.cli.distill import register as _register_distill  # noqa: E402

_register_distill(cloud_app)
