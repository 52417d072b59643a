"""One rank of a ``fedge cloud train --nproc`` run; started by torchrun, not by hand.

Usage (what :mod:`cloud.training.distributed` runs):
``python -m torch.distributed.run --nproc-per-node=N -m cloud.training.ddp_worker JOB``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cloud.data import load_dataset, stratified_split
from cloud.training.models import ModelSpec
from cloud.training.serialize import model_to_bytes
from cloud.training.trainer import TrainConfig, train


def main(job_path: str) -> None:
    """Join the process group, train, and (global rank 0) write weights and metrics."""
    job = json.loads(Path(job_path).read_text())
    config = TrainConfig(**job["config"])
    use_cuda = torch.cuda.is_available() and config.device != "cpu"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        dataset = load_dataset(job["data"], reading=job["reading"])
        split = stratified_split(dataset, seed=config.seed)
        spec = ModelSpec.from_dict(job["spec"])
        checkpoint_dir = Path(job["checkpoint_dir"]) if job["checkpoint_dir"] else None
        result = train(split, spec, config, checkpoint_dir=checkpoint_dir, resume=job["resume"])
        if dist.get_rank() == 0:
            out = Path(job["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.pt").write_bytes(model_to_bytes(result.model))
            metrics = {**result.metrics, "backend": dist.get_backend()}
            (out / "metrics.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
