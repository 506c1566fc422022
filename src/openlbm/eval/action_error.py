"""Teacher-forced action error: the policy on a dataset's *recorded* observations, against its recorded actions.

A rollout's success says whether a policy works, not where it goes wrong; on a 14-d bimanual robot a policy can fail
from one joint that it never learned. Here every window of recorded observations (``n_obs_steps`` frames, padded at
an episode's start exactly as in training) is given to ``predict_chunk``, and the first ``steps`` rows of the chunk are
compared with the actions the demonstration executed there. The result is the mean absolute error per action dim,
in the dataset's own units (radians for ALOHA's joints, the gripper's 0..1 opening for its grippers), so a number
reads as "the policy would have commanded the left shoulder 0.08 rad off". ``lbm eval --demo-starts DATA`` writes it
beside the success rate of the same demos (:data:`ERROR_FILE`).

It is *teacher-forced*: each window is the demonstration's, never the policy's own past, so it measures fit, not the
compounding drift of a rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openlbm.types import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, EmbodimentSpec, Observation

ERROR_FILE = "action_error.json"
"""Where ``lbm eval --demo-starts`` writes :meth:`ActionError.to_dict` in its eval dir."""


@dataclass(frozen=True)
class ActionError:
    """Mean absolute action error per action dim over teacher-forced windows."""

    names: tuple[str, ...]
    """Name of each action dim (the dataset's ``action`` feature names)."""
    mean_abs: tuple[float, ...]
    """Mean ``|predicted - recorded|`` per dim, in the dataset's action units."""
    steps: int
    """Chunk rows compared per window (row 0 is the action for the window's last observation)."""
    windows: int
    """Windows evaluated."""
    dataset: str
    """The dataset's root."""

    @property
    def overall(self) -> float:
        """Mean over dims."""
        return float(np.mean(self.mean_abs)) if self.mean_abs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overall": self.overall}

    def lines(self) -> list[str]:
        """Human-readable: one ``name  error`` line per dim, then the mean."""
        width = max(len(n) for n in self.names)
        head = f"teacher-forced action error (mean |a - a_demo| over the first {self.steps} chunk step(s), " \
               f"{self.windows} windows of {self.dataset}):"
        return [head, *(f"  {n:<{width}}  {e:.4f}" for n, e in zip(self.names, self.mean_abs, strict=True)),
                f"  {'mean':<{width}}  {self.overall:.4f}"]


def _embodiment(policy: Any, robot_type: str) -> EmbodimentSpec:
    specs: dict[str, EmbodimentSpec] = policy.specs
    if robot_type in specs:
        return specs[robot_type]
    if len(specs) == 1:
        return next(iter(specs.values()))
    raise ValueError(f"the dataset's robot_type {robot_type!r} is none of the policy's embodiments {sorted(specs)}")


def _observation(samples: list[dict[str, Any]], spec: EmbodimentSpec) -> Observation:
    return Observation(
        images={c: torch.stack([s[IMAGE_PREFIX + c] for s in samples]) for c in spec.cameras},  # [B, T, 3, H, W]
        state=torch.stack([s[STATE_KEY] for s in samples]).float(),  # [B, T, S]
        instruction=[s["task"] for s in samples],
        embodiment=[spec.name] * len(samples),
        obs_is_pad=torch.stack([s["obs_is_pad"] for s in samples]),  # [B, T]
    )


@torch.inference_mode()
def teacher_forced_error(
    policy: Any,
    root: Path | str,
    episodes: Sequence[int] | None = None,
    steps: int = 1,
    stride: int = 1,
    batch_size: int = 32,
    seed: int = 0,
) -> ActionError:
    """:class:`ActionError` of ``policy`` (an ``LBMPolicy``) on dataset ``root``'s ``episodes`` (all by default).

    Every ``stride``-th frame of each episode is a window; ``steps`` rows of each chunk are compared (rows past the
    episode's end are skipped). The sampler's noise comes from a generator seeded with ``seed`` (reproducible).
    """
    from openlbm.data.dataset import RobotDataset

    cfg = policy.config
    if not 1 <= steps <= cfg.horizon or stride < 1 or batch_size < 1:
        raise ValueError(f"need 1 <= steps <= horizon={cfg.horizon}, stride >= 1, batch_size >= 1; got {steps}, "
                         f"{stride}, {batch_size}")
    ds = RobotDataset(root, n_obs_steps=cfg.n_obs_steps, horizon=steps, episodes=episodes)
    spec = _embodiment(policy, ds.meta.robot_type)
    missing = [c for c in spec.cameras if IMAGE_PREFIX + c not in ds.meta.camera_keys]
    if missing or ACTION_KEY not in ds.meta.features:
        raise ValueError(f"{ds.root} lacks what the policy's {spec.name!r} embodiment reads: cameras {missing}"
                         + ("" if ACTION_KEY in ds.meta.features else " and actions"))
    names = tuple(ds.meta.features[ACTION_KEY].names or [f"action[{i}]" for i in range(spec.action_dim)])
    total, count = torch.zeros(spec.action_dim, dtype=torch.float64), torch.zeros(spec.action_dim, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = list(range(0, len(ds), stride))
    for b in range(0, len(picks), batch_size):
        samples = [ds[i] for i in picks[b : b + batch_size]]
        chunk = policy.predict_chunk(_observation(samples, spec), generator=generator).cpu()  # [B, H, A]
        pred = chunk[:, :steps, : spec.action_dim].double()  # [B, steps, A]
        true = torch.stack([s[ACTION_KEY] for s in samples]).double()[..., : spec.action_dim]  # [B, steps, A]
        real = ~torch.stack([s["action_is_pad"] for s in samples])  # [B, steps]: rows inside the episode
        total += ((pred - true).abs() * real[..., None]).sum(dim=(0, 1))
        count += real.sum().double()
    err = (total / count.clamp(min=1)).tolist()
    return ActionError(names[: spec.action_dim], tuple(err), steps, len(picks), str(ds.root))


DEMO_STRIDE = 5
"""``lbm eval --demo-starts`` takes every 5th frame of each evaluated demo as a window (a 400-step ALOHA demo
gives 80): enough for a per-dim mean, a fraction of the rollouts' time."""


def write_demo_error(policy: Any, dataset: Path, tasks: Sequence[str], per_task: int, out: Path) -> ActionError:
    """The error on the demos whose starts ``lbm eval --demo-starts`` rolled out (the first ``per_task`` of each of
    ``tasks``), over the rows a chunk executes (``n_action_steps``; 1 with temporal ensembling, which executes row 0
    of the newest chunk blended with older ones); written to ``out / ERROR_FILE``."""
    from openlbm.envs.generate import demo_episodes
    from openlbm.jsonio import write_json

    by_task = demo_episodes(dataset)
    episodes = sorted(ep for t in tasks for ep in by_task.get(t, [])[:per_task])
    execution = policy.execution
    steps = 1 if execution.temporal_ensemble is not None else execution.n_action_steps
    err = teacher_forced_error(policy, dataset, episodes=episodes, steps=steps, stride=DEMO_STRIDE)
    write_json(out / ERROR_FILE, err.to_dict())
    return err
