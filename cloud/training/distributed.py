"""``fedge cloud train --nproc N``: data-parallel training through torchrun.

The coordinator process does not train: it writes the job to a JSON file and runs
``python -m torch.distributed.run`` (torchrun's elastic launcher) over
:mod:`cloud.training.ddp_worker`. Each rank joins the process group (NCCL on GPUs, gloo on
CPU), trains its share of every global batch under DistributedDataParallel, and global
rank 0 writes the trained weights and metrics back. Only then does the coordinator register
the version, so a failed rank never leaves a half-registered model behind.

Multi-node: run the same command on every node with ``--nnodes``, ``--node-rank``,
``--master-addr`` and ``--master-port`` (the c10d rendezvous); only node 0 holds the result
and registers it. One node without those flags uses ``--standalone`` (a free local port).

FSDP (for a model that does not fit one device) is not wired in: every fedge model fits one
device with room to spare, and DDP is what the 2.8 M-parameter teacher needs. The hook is
the wrap in :func:`cloud.training.trainer.train`: ``FullyShardedDataParallel(model)`` in
place of DDP, with a sharded-state-dict checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud.training.models import ModelSpec
from cloud.training.trainer import TrainConfig
from shared.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Launch:
    """How many processes, on how many nodes."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    def torchrun_args(self) -> list[str]:
        """torchrun's own options for this launch."""
        if self.nproc < 1 or self.nnodes < 1:
            raise ConfigError("--nproc and --nnodes must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} is not in 0..{self.nnodes - 1}")
        args = [f"--nproc-per-node={self.nproc}"]
        if self.nnodes == 1 and self.master_addr is None:
            return [*args, "--standalone"]
        if self.master_addr is None:
            raise ConfigError("--nnodes > 1 needs --master-addr (node 0's address)")
        return [
            *args,
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]


@dataclass(frozen=True)
class DistributedOutcome:
    """What rank 0 wrote back: weights and metrics (None on nodes other than 0)."""

    weights: bytes | None
    metrics: dict[str, Any]


def run_distributed(
    data: str,
    reading: str,
    spec: ModelSpec,
    config: TrainConfig,
    launch: Launch,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    timeout_s: float | None = None,
) -> DistributedOutcome:
    """Train ``spec`` on ``data`` with ``launch.nproc`` ranks per node; see the module doc.

    Raises:
        TrainingError: a rank failed (its output is in the message's tail).
    """
    with tempfile.TemporaryDirectory(prefix="fedge-ddp-") as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "out"
        job.write_text(
            json.dumps(
                {
                    "data": data,
                    "reading": reading,
                    "spec": spec.to_dict(),
                    "config": asdict(config),
                    "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                    "resume": resume,
                    "out": str(out),
                }
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *launch.torchrun_args(),
            "-m",
            "cloud.training.ddp_worker",
            str(job),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(
                    None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]
                )
            ),
        }
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TrainingError(f"distributed training exceeded {timeout_s}s") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise TrainingError(f"distributed training failed (exit {proc.returncode}): {tail}")
        if not (out / "metrics.json").exists():
            return DistributedOutcome(None, {"node_rank": launch.node_rank})
        return DistributedOutcome(
            (out / "model.pt").read_bytes(), json.loads((out / "metrics.json").read_text())
        )
