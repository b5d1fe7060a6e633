"""Process-group setup for every way the engine is started.

* No launcher: a one-rank environment (RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR=127.0.0.1,
  MASTER_PORT=a free port) is set before ``deepspeed.init_distributed`` — otherwise DeepSpeed
  tries MPI discovery and asks for mpi4py.
* ``torchrun`` / ``deepspeed`` launchers: their environment variables are used as they are.
* CPU-only machines: ``DS_ACCELERATOR=cpu`` is set (before DeepSpeed is imported) and the gloo
  backend is used; NCCL on CUDA.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["free_port", "ensure_environment", "init_distributed", "rank", "world_size",
           "all_reduce_sum", "broadcast_object", "barrier"]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_environment() -> None:
    """Set ``DS_ACCELERATOR=cpu`` without CUDA, and a one-rank env when no launcher set one."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on CUDA) once."""
    ensure_environment()
    if dist.is_available() and dist.is_initialized():
        return
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR") != "cpu" \
        else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op with one rank); returns ``t``."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
