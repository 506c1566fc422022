"""Atomic, exactly-resumable training checkpoints (safetensors + JSON only; nothing is pickled).

Layout of one checkpoint ``run_dir/checkpoints/step_00001000/``::

    policy/                  LBMPolicy.save() of the EMA weights: what eval / serve / init_from load
    model.safetensors        raw (non-EMA) trained weights, full (unsharded) state dict
    optimizer.safetensors    AdamW moments, keyed ``state/<param name>/<key>``
    optimizer.json           param groups (hyper-parameters and parameter names) + non-tensor state
    ema.safetensors          EMA weights and buffers (when EMA is on)
    rng_rank<r>.safetensors  torch CPU (+ CUDA) and numpy generator states of rank r
    rank<r>.json             python ``random`` state, numpy scalars and the sampler state of rank r
    trainer.json             step, samples seen, world size

A checkpoint is written into ``checkpoints/.tmp_step_XXXXXXXX`` and renamed into place only when complete, then
``checkpoints/latest`` (a one-line text file naming the step dir) is replaced atomically. A crash at any moment
leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from openlbm.errors import UserError
from openlbm.jsonio import changed_fields, read_json, write_json
from openlbm.policies.policy_dir import CKPT_PREFIX, LATEST, POLICY_DIR, list_checkpoints, read_latest
from openlbm.policies.pretrained import state_dict_diff
from openlbm.train import distributed as dist_utils

log = logging.getLogger(__name__)


def step_dir_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:08d}"


# -- RNG ---------------------------------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every global generator's state as (tensors, JSON-able values)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, pystate, gauss_next = random.getstate()
    values = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(pystate), "gauss_next": gauss_next},
    }
    return tensors, values


def set_rng_state(tensors: dict[str, Tensor], values: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = values["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = values["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -- optimizer <-> safetensors + JSON ----------------------------------------------------------------------------------
def _flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"state/{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, rest = key.split("/", 1)
        name, field_name = rest.rsplit("/", 1)
        state.setdefault(name, {})[field_name] = value
    for name, scalars in meta["scalar_state"].items():
        state.setdefault(name, {}).update(scalars)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- save ----------------------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What the loop needs to continue exactly where a checkpoint left off."""

    step: int
    """Optimizer steps completed."""
    samples_seen: int = 0
    """Global samples consumed so far."""
    sampler: dict[str, Any] = field(default_factory=dict)
    """This rank's sampler ``state_dict()`` (JSON-able)."""


def save_checkpoint(
    ckpt_root: Path,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema_state: dict[str, Tensor] | None,
    export_policy: Any,
    keep_last_k: int,
) -> Path:
    """Write one checkpoint atomically. Collective: every rank must call it (``model`` is the unwrapped module).

    ``export_policy`` (an ``LBMPolicy``, normally the EMA copy) is saved to ``policy/`` by rank 0.
    """
    rank, world = dist_utils.rank(), dist_utils.world_size()
    final = ckpt_root / step_dir_name(state.step)
    tmp = ckpt_root / f".tmp_{step_dir_name(state.step)}"
    # Gathering full state dicts is a collective under FSDP, so every rank takes part before rank 0 writes.
    model_sd, optim_sd = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist_utils.barrier()
    rng_tensors, rng_values = rng_state()
    save_file(rng_tensors, str(tmp / f"rng_rank{rank}.safetensors"))
    write_json(tmp / f"rank{rank}.json", {"rng": rng_values, "sampler": state.sampler})
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optim_sd)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", opt_meta)
        if ema_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
        export_policy.save(tmp / POLICY_DIR)
    dist_utils.barrier()
    if rank == 0:
        write_json(tmp / "trainer.json", {"step": state.step, "samples_seen": state.samples_seen, "world_size": world})
        if final.exists():  # re-saving the same step after a resume: swap out the old copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(ckpt_root / LATEST, final.name + "\n")
        prune_checkpoints(ckpt_root, keep_last_k)
    dist_utils.barrier()
    return final


def prune_checkpoints(ckpt_root: Path, keep_last_k: int) -> list[Path]:
    """Delete all but the newest ``keep_last_k`` step dirs (never the one ``latest`` names) and stale temp dirs."""
    steps = list_checkpoints(ckpt_root)
    latest = read_latest(ckpt_root)
    removed = []
    for d in steps[:-keep_last_k] if keep_last_k > 0 else steps:
        if latest is not None and d == latest:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    for d in ckpt_root.glob(f".tmp_{CKPT_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)
    return removed


def read_step(ckpt_dir: Path) -> int:
    """The optimizer step a checkpoint dir was written at."""
    return int(read_json(ckpt_dir / "trainer.json")["step"])


# -- load ----------------------------------------------------------------------------------------------------------------
def load_checkpoint(
    ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: Any | None
) -> TrainState:
    """Restore model, optimizer and EMA (every rank reads the files); returns the train state of this rank.

    RNG states are *not* applied here: call :func:`restore_rng` once the data iterator exists, because creating a
    DataLoader iterator draws from the torch generator.
    """
    trainer = read_json(ckpt_dir / "trainer.json")
    if trainer["world_size"] != dist_utils.world_size():
        raise ValueError(
            f"checkpoint {ckpt_dir} was written with world_size={trainer['world_size']}, this run has "
            f"{dist_utils.world_size()}: exact resume needs the same number of processes"
        )
    model_sd = load_file(str(ckpt_dir / "model.safetensors"))
    optim_sd = _unflatten_optimizer(load_file(str(ckpt_dir / "optimizer.safetensors")), read_json(ckpt_dir / "optimizer.json"))
    missing, unexpected, shapes = state_dict_diff(model.state_dict(), model_sd, ours_label="model")
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not match this model: missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatches {shapes[:10]} (was the policy config changed since this run started?)"
        )
    set_state_dict(
        model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
        options=StateDictOptions(full_state_dict=True),
    )
    if ema is not None:
        ema_file = ckpt_dir / "ema.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"{ema_file} missing: the checkpoint was written with EMA disabled")
        ema.load_state_dict(load_file(str(ema_file)))
        ema.updates = trainer["step"]
    rank_state = read_json(ckpt_dir / f"rank{dist_utils.rank()}.json")
    return TrainState(step=trainer["step"], samples_seen=trainer["samples_seen"], sampler=rank_state["sampler"])


def restore_rng(ckpt_dir: Path) -> None:
    r = dist_utils.rank()
    set_rng_state(load_file(str(ckpt_dir / f"rng_rank{r}.safetensors")), read_json(ckpt_dir / f"rank{r}.json")["rng"])


# -- resume: the config must be the one the run started with -------------------------------------------------------------
CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
RESUME_FREE_FIELDS = frozenset({
    "resume", "eval_every", "eval_timeout_s", "log", "checkpoint", "data.num_workers", "data.prefetch_factor",
})
"""Config fields (dotted paths, or a prefix of them) that may change on resume without changing what is trained:
how often to evaluate, log and checkpoint, and how many loader workers feed the (exactly resumable) sampler."""


class ConfigChangedError(UserError, ValueError):
    """A run is being resumed with a config that differs from the one it was started with."""


def config_changes(old: Any, new: Any) -> list[str]:
    """``"dotted.path: old -> new"`` (sorted) for every field where two configs differ, except :data:`RESUME_FREE_FIELDS`."""
    def free(change: str) -> bool:
        path = change.split(":", 1)[0]
        return any(path == f or path.startswith(f + ".") for f in RESUME_FREE_FIELDS)

    return sorted(c for c in changed_fields(old, new) if not free(c))


def check_resume_config(run_dir: Path, new: dict[str, Any], allow_change: bool) -> list[str]:
    """Compare ``new`` with the ``config.json`` a resumed run was started with; returns the changes.

    Raises :class:`ConfigChangedError` listing them unless ``allow_change``: the weights, optimizer state and data
    order of the checkpoint belong to the old config, so a silent change would make the run mean something else.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return []
    try:
        old = read_json(path)
    except ValueError as e:
        raise ConfigChangedError(f"{e}; cannot check the resumed config against it") from None
    changes = config_changes(old, new)
    if changes and not allow_change:
        raise ConfigChangedError(
            f"{path}: resuming with a config that differs from the run's: {'; '.join(changes)}. Resume with the "
            "original settings, or pass --allow-config-change to continue anyway (recorded in "
            f"{CONFIG_CHANGES_FILE})"
        )
    return changes


def record_config_change(run_dir: Path, step: int, changes: list[str]) -> None:
    """Append an allowed config change (at resume step ``step``) to ``run_dir/config_changes.jsonl``."""
    with (run_dir / CONFIG_CHANGES_FILE).open("a") as f:
        f.write(json.dumps({"step": step, "changes": changes}) + "\n")


# -- small file helpers --------------------------------------------------------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
