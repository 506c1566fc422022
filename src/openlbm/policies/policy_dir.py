"""Where a saved policy lives: a policy dir, inside a checkpoint dir, inside a run dir.

::

    runs/x/                                  run dir (written by the trainer)
        checkpoints/latest                   one line naming the newest complete step dir
        checkpoints/step_00001000/           checkpoint dir (trainer state beside the policy)
            policy/                          policy dir: config.json + model.safetensors + stats.json
            trainer.json ...

``lbm eval``, ``lbm serve`` and fine-tuning (``--init-from``) accept any of the three and load the policy dir
:func:`resolve_policy_dir` finds. The trainer writes this layout (``openlbm.train.checkpoint``); reading it lives
here so that evaluation and serving never import training code.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
"""A run dir's folder of checkpoint dirs."""
CKPT_PREFIX = "step_"
"""Checkpoint dir names: ``step_`` + the zero-padded optimizer step."""
LATEST = "latest"
"""File in ``checkpoints/`` naming the newest complete checkpoint dir."""
POLICY_DIR = "policy"
"""A checkpoint dir's policy dir (the EMA weights, loadable without the training code)."""


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete step dirs under ``ckpt_root`` (a run dir's ``checkpoints/``), oldest first."""
    if not ckpt_root.is_dir():
        return []
    dirs = [d for d in ckpt_root.iterdir() if d.is_dir() and d.name.startswith(CKPT_PREFIX)]
    return sorted(dirs, key=lambda d: d.name)


def read_latest(ckpt_root: Path) -> Path | None:
    """The step dir ``checkpoints/latest`` names (the newest step dir when the file is absent; None when empty)."""
    f = ckpt_root / LATEST
    if not f.is_file():
        steps = list_checkpoints(ckpt_root)
        return steps[-1] if steps else None
    d = ckpt_root / f.read_text().strip()
    if not d.is_dir():
        raise FileNotFoundError(f"{f} names {d.name}, which does not exist")
    return d


def resolve_policy_dir(path: Path | str) -> Path:
    """A policy dir (``config.json`` + ``model.safetensors``) from a run dir, a checkpoint dir or a policy dir."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (expected a run dir, a checkpoint dir or a policy dir)")
    if (p / "model.safetensors").is_file() and (p / "config.json").is_file() and not (p / "trainer.json").exists():
        return p
    if (p / POLICY_DIR / "model.safetensors").is_file():
        return p / POLICY_DIR
    ckpt_root = p / CHECKPOINTS
    if ckpt_root.is_dir():
        latest = read_latest(ckpt_root)
        if latest is not None and (latest / POLICY_DIR / "model.safetensors").is_file():
            return latest / POLICY_DIR
        raise FileNotFoundError(f"run dir {p} has no complete checkpoint yet under {ckpt_root}")
    raise FileNotFoundError(
        f"{p} is not a policy dir (config.json + model.safetensors), a checkpoint dir (policy/) or a run dir "
        "(checkpoints/latest)"
    )
