"""torchrun integration: process-group setup, model wrapping (DDP / FSDP2) and small collective helpers.

Launched by ``torchrun --nproc_per_node N -m openlbm.cli train ...`` the environment carries ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; a plain ``lbm train`` runs as a world of one and none of this is touched.
Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup(device: str) -> DistInfo:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        log.info("process group up: rank %d/%d backend %s device %s", rank, world, backend, dev)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned for chaining); identity in a world of one."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: nn.Module, kind: Literal["ddp", "fsdp"], info: DistInfo) -> nn.Module:
    """Wrap for data parallelism. Returns the module to call forward on; the unwrapped module stays ``model``.

    DDP averages gradients over ranks; FSDP2 (``fully_shard``) shards parameters, gradients and optimizer state.
    """
    if info.world_size == 1:
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        # find_unused_parameters: embodiment-specific heads that a batch does not touch receive no gradient.
        return DDP(model, device_ids=ids, find_unused_parameters=True)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # One FSDP unit over the whole policy: the trunk's blocks are also called outside their forward
        # (cross-attention K/V are cached once per observation), which per-block units would miss.
        fully_shard(model)
        return model
    raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {kind!r}")

