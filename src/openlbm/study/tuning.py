"""Equal tuning for both arms of the study: one step rule, one learning-rate grid, one selection criterion.

The rule (the same for scratch and fine-tuned, at every count):

- **Steps**: ``StudyConfig.steps`` for every run, or with ``StudyConfig.epochs`` a number of passes over the run's own
  demos: ``ceil(epochs * frames / batch_size)``, so a run with more demos trains longer, by the same rule for both
  arms. Warmup: the scratch preset's, capped at a tenth of the steps.
- **Learning rate**: each arm, at each count, trains once per rate of ``StudyConfig.lr_rates()`` (training seed
  ``seeds[0]``); the rate whose final (EMA) policy has the lowest loss on held-out validation demos wins, and every
  seed of that arm and count trains with it. Evaluation success never enters the choice. The run at ``seeds[0]``
  with the chosen rate *is* that seed's run (it is moved into place, not retrained).
- **Validation demos**: the last ``val_demos_per_task`` episodes of every task in generation order, never trained
  on (demo subsets take the first ``n``). The loss is the action loss over a fixed set of windows with fixed noise
  (seeded), so two runs' numbers are comparable and a re-computation gives the same value.

Layout::

    runs/tune/<arm>-n<count>-lr<k>/train     one grid point's training run (until it is moved into place)
    runs/tune/<arm>-n<count>-lr<k>.json      its validation loss (the unit is done when this exists)
    runs/tune/<arm>-n<count>.json            the selection: every rate's loss and the chosen one (also in the bundle)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openlbm.study.data_efficiency import StudyConfig

log = logging.getLogger(__name__)

VAL_BATCHES = 8
"""Batches of the validation loss (at the run's batch size, fixed windows and noise)."""


@dataclass(frozen=True)
class Tune:
    """One grid point: an arm at a count with the ``index``-th learning rate, at the first training seed."""

    arm: str
    count: int
    index: int

    @property
    def name(self) -> str:
        return f"{self.arm}-n{self.count:03d}-lr{self.index}"


def tune_dir(cfg: StudyConfig) -> Path:
    return cfg.out / "runs" / "tune"


def selection_path(cfg: StudyConfig, arm: str, count: int) -> Path:
    return tune_dir(cfg) / f"{arm}-n{count:03d}.json"


def plan_tuning(cfg: StudyConfig, arms_counts: list[tuple[str, int]]) -> list[Tune]:
    """Every grid point of every (arm, count), none when the grid has a single rate."""
    rates = cfg.lr_rates()
    if len(rates) < 2:
        return []
    return [Tune(arm, n, k) for arm, n in arms_counts for k in range(len(rates))]


def held_out(by_task: dict[str, list[int]], tasks: list[str], val: int, root: Path) -> tuple[int, ...]:
    """The validation demos: the last ``val`` episodes of every task (never in a training subset)."""
    if val == 0:
        return ()
    short = {t: len(by_task.get(t, [])) for t in tasks if len(by_task.get(t, [])) <= val}
    if short:
        raise ValueError(f"{root}: too few demos {short} to hold out {val} per task for validation")
    return tuple(sorted(e for t in tasks for e in by_task[t][-val:]))


def steps_for(cfg: StudyConfig, frames: int, batch_size: int, default_steps: int) -> int:
    """The step rule (module docstring), the same for both arms."""
    if cfg.epochs is None:
        return cfg.steps or default_steps
    return max(1, math.ceil(cfg.epochs * frames / batch_size))


def frames_of(root: Path, episodes: tuple[int, ...]) -> int:
    from openlbm.data.dataset import DatasetMeta

    lengths = DatasetMeta(root).ep_len
    return int(sum(int(lengths[e]) for e in episodes))


def validation_loss(policy_dir: Path, root: Path, episodes: tuple[int, ...], batch_size: int, device: str) -> float:
    """Mean action loss of the policy in ``policy_dir`` over ``VAL_BATCHES`` fixed batches of ``episodes``."""
    import torch

    from openlbm.data.mixture import DataConfig, SourceConfig
    from openlbm.policies.lbm import LBMPolicy
    from openlbm.train.distributed import resolve_device
    from openlbm.train.loop import sample_seeds

    dev = resolve_device(device)
    policy = LBMPolicy.load(policy_dir, device=dev).eval()
    data = DataConfig(sources=(SourceConfig(root=root, episodes=episodes),), num_workers=0).build(
        None, n_obs_steps=policy.config.n_obs_steps, horizon=policy.config.horizon, batch_size=batch_size, seed=0)
    total, weight = 0.0, 0.0
    it = iter(data.loader())
    with torch.no_grad():
        for _ in range(VAL_BATCHES):
            batch = next(it)
            batch.meta["sample_seed"] = sample_seeds(0, data.sampler.consumed, batch.batch_size, 0, 1)
            batch = batch.to(dev)
            losses, _ = policy.compute_loss(batch)
            w = float(policy.loss_weight(batch)["action"])
            total, weight = total + float(losses["action"]) * w, weight + w
    return total / max(weight, 1.0)


def selected_lr(cfg: StudyConfig, arm: str, count: int) -> float | None:
    """The chosen rate of ``arm`` at ``count``: the grid's only rate, else the lowest validation loss once every
    grid point is done (writes the selection record), else ``None`` (not decided yet)."""
    rates = cfg.lr_rates()
    if len(rates) == 1:
        return rates[0]
    path = selection_path(cfg, arm, count)
    if path.is_file():
        return float(json.loads(path.read_text())["lr"])
    losses = []
    for k in range(len(rates)):
        point = tune_dir(cfg) / f"{Tune(arm, count, k).name}.json"
        if not point.is_file():
            return None
        losses.append(float(json.loads(point.read_text())["val_loss"]))
    best = min(range(len(rates)), key=lambda k: (losses[k], k))  # ties: the first (smaller) rate
    from openlbm.study.bundle import write_json_atomic

    record = {"arm": arm, "count": count, "rates": list(rates), "val_loss": losses, "lr": rates[best], "index": best,
              "criterion": f"lowest action loss on the held-out validation demos ({cfg.val_demos_per_task} per task)"}
    write_json_atomic(path, record)
    return rates[best]


def wait_for_lr(cfg: StudyConfig, arm: str, count: int) -> float:
    """The chosen rate, waiting for other shards to finish the grid (they run every grid point before any
    seed run, so nothing waits on itself)."""
    lr = selected_lr(cfg, arm, count)
    if lr is None:
        log.info("waiting for the learning-rate grid of %s at %d demos/task (other shards)", arm, count)
    while lr is None:
        time.sleep(5.0)
        lr = selected_lr(cfg, arm, count)
    return lr


def record_point(cfg: StudyConfig, unit: Tune, val_loss: float, lr: float) -> None:
    from openlbm.study.bundle import write_json_atomic

    write_json_atomic(tune_dir(cfg) / f"{unit.name}.json", {"lr": lr, "val_loss": val_loss})


def point_done(cfg: StudyConfig, unit: Tune) -> bool:
    return (tune_dir(cfg) / f"{unit.name}.json").is_file()


def selections(out: Path) -> list[dict[str, Any]]:
    """Every selection record under ``out`` (a study folder's ``runs/tune`` or a bundle's ``tuning``)."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*-n*.json")) if "-lr" not in p.stem]
