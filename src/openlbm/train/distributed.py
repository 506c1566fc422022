"""torchrun integration: process-group setup, model wrapping (DDP / FSDP2) and small collective helpers.

Launched by ``torchrun --nproc_per_node N -m openlbm.cli train ...`` the environment carries ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; a plain ``lbm train`` runs as a world of one and none of this is touched.
Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def wait_for_main(key: str, timeout_s: float, what: str) -> None:
    """Rank 0 marks ``key`` done; every other rank waits for it on the rendezvous store (up to ``timeout_s``).

    A store wait is not a collective: rank 0 may take longer than the collective (NCCL/gloo) timeout, e.g. for
    evaluation rollouts, without the job being killed; past ``timeout_s`` the waiting ranks stop with an error
    naming ``what``. A no-op in a world of one."""
    if not is_dist():
        return
    store = dist.distributed_c10d._get_default_store()
    if rank() == 0:
        store.set(key, "done")
        return
    try:
        store.wait([key], timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistError) as e:
        raise TimeoutError(f"rank {rank()}: {what} on rank 0 did not finish within {timeout_s:g} s "
                           f"(eval_timeout_s): {e}") from e


def main_first(fn: Callable[[], T], what: str, timeout_s: float) -> T:
    """``fn()`` on rank 0 alone, its result on every rank: the others wait on the store (not in a collective, so
    ``fn`` may outlast the collective timeout), then get the result broadcast. An exception on rank 0 stops every
    rank (rank 0 raises it, the others a ``RuntimeError`` quoting it)."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 (re-raised below, after the other ranks are told)
            error = e
    if is_dist():
        wait_for_main(f"openlbm/{what}", timeout_s, what)
        result, message = broadcast_object((result, None if error is None else f"{type(error).__name__}: {error}"))
        if message is not None and error is None:
            raise RuntimeError(f"rank 0 failed in {what}: {message}")
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


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


def wrap_model(
    model: nn.Module, kind: Literal["ddp", "fsdp"], info: DistInfo, units: Sequence[nn.Module] = (),
    precision: Literal["fp32", "bf16"] = "fp32",
) -> nn.Module:
    """Wrap for data parallelism. Returns the module to call forward on; the unwrapped module stays ``model``.

    DDP averages gradients over ranks; FSDP2 (``fully_shard``) shards parameters, gradients and optimizer state:
    see :func:`shard` (``units``: the layers sharded one by one, in forward order; ``precision``: the run's
    ``TrainConfig.precision``, see :func:`fsdp_mixed_precision`). DDP's parameters and gradients stay fp32 under
    bf16 (autocast casts per op), so DDP reduces fp32 gradients.
    """
    if info.world_size == 1:
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        # find_unused_parameters: embodiment-specific heads that a batch does not touch receive no gradient.
        return DDP(model, device_ids=ids, find_unused_parameters=True)
    if kind == "fsdp":
        shard(model, units, fsdp_mixed_precision(precision))
        return model
    raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {kind!r}")


def fsdp_mixed_precision(precision: Literal["fp32", "bf16"]) -> MixedPrecisionPolicy | None:
    """FSDP2's share of ``--precision bf16`` (None for fp32): the sharded parameters (the optimizer's master
    weights) stay fp32; each unit casts its shard to bf16 *before* the all-gather (half the bytes) and computes
    with bf16 weights; gradients are reduce-scattered in fp32, and accumulated in fp32 while gradient sync is off.

    Autocast (the loop's, around every forward) stays the one mechanism for activations: it finds the weights
    already bf16, so nothing is cast twice, and FSDP leaves the forward inputs alone (``cast_forward_inputs=False``)
    so that activations, norms and losses take the same dtypes sharded or not (fp32 residual stream, fp32
    losses)."""
    if precision == "fp32":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard(model: nn.Module, units: Sequence[nn.Module], mp_policy: MixedPrecisionPolicy | None = None) -> None:
    """FSDP2 per block: each of ``units`` is its own FSDP unit (gathered just for its own calls, resharded after
    them, its gradients reduce-scattered as soon as its backward is done), the rest of ``model`` is the root unit.
    ``mp_policy``: every unit's mixed precision (:func:`fsdp_mixed_precision`; None: fp32 throughout).

    A unit's ``outside_forward`` methods (e.g. a trunk block's cross-attention K/V cache, computed once per chunk
    outside ``forward``) are registered with ``register_fsdp_forward_method``, so they gather the unit's
    parameters too. Each unit prefetches the next one's all-gather when it starts (forward; FSDP2 prefetches in
    backward by itself), overlapping communication with compute.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    units = list(units)
    kwargs = {} if mp_policy is None else {"mp_policy": mp_policy}
    for unit in units:
        fully_shard(unit, **kwargs)
        for name in getattr(unit, "outside_forward", ()):
            register_fsdp_forward_method(unit, name)
    fully_shard(model, **kwargs)
    for unit, following in zip(units, units[1:], strict=False):
        unit.set_modules_to_forward_prefetch([following])  # type: ignore[operator]


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Whether the backward passes inside reduce gradients over ranks: off for all but the last micro-batch of a
    step (DDP ``no_sync``; FSDP2 ``set_requires_gradient_sync``, which accumulates unsharded gradients, in fp32
    under bf16, and reduce-scatters once per step: one collective per unit instead of one per micro-batch, for
    the memory of a whole unsharded gradient per rank between micro-batches). A no-op for a module that is
    neither."""
    if enabled:
        yield
        return
    if hasattr(model, "no_sync"):
        with model.no_sync():  # type: ignore[operator]
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    root = next((m for m in model.modules() if isinstance(m, FSDPModule)), None)
    if root is None:
        yield
        return
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)
