"""Periodic evaluation inside training: ``eval_fn(policy, step) -> {"eval/success": ..., "eval/<task>": ...}``.

The env workers are started once and reused across calls (starting MuJoCo workers costs seconds). The episodes are
the same fixed starts at every step (``openlbm.eval.runner.episode_seed``), so the curve measures the policy, not
the luck of the draw, and sampled with the same sampler as ``lbm eval`` (``noise_seed``, default 0 as there: see
``EvalConfig.noise_seed``). The policy's train/eval mode and noise seed are restored afterwards: evaluation never
mutates a policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from openlbm.eval.runner import check_spec, plan_episodes
from openlbm.types import PolicyLike

log = logging.getLogger(__name__)


class TrainEvalFn:
    """Callable ``(policy, step) -> metrics``; call :meth:`close` (or use as a context manager) to stop workers."""

    def __init__(
        self,
        tasks: str | Sequence[str],
        episodes: int,
        *,
        suite: str = "metaworld",
        seed: int = 0,
        instructions: Literal["train", "heldout"] = "train",
        num_workers: int = 2,
        max_steps: int | None = None,
        out_dir: Path | None = None,
        progress: bool = False,
        noise_seed: int | None = 0,
    ) -> None:
        from openlbm.envs.tasks import resolve_tasks

        if episodes < 1:
            raise ValueError(f"in-training eval needs episodes >= 1 per task, got {episodes}")
        self.suite = suite
        self.tasks = resolve_tasks(tasks, suite=suite)
        self.plan = plan_episodes(self.tasks, episodes, seed, instructions)
        self.num_workers, self.max_steps, self.progress = num_workers, max_steps, progress
        self.noise_seed = noise_seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._runner: Any = None
        self._env_cfg: Any = None

    def _embodiment(self, policy: PolicyLike) -> Any:
        """The policy's embodiment for this suite's robot (a multi-embodiment policy acts as that one)."""
        from openlbm.envs.suites import robot_name

        specs = getattr(policy, "specs", {})
        return specs.get(robot_name(self.suite), policy.embodiment)

    def _runner_for(self, policy: PolicyLike) -> Any:
        from openlbm.envs.rollout import RolloutRunner
        from openlbm.envs.suites import env_config

        emb = policy.embodiment
        env_cfg = env_config(self.suite, tuple(emb.cameras), tuple(emb.image_size), self.max_steps)
        check_spec(emb, env_cfg.embodiment())
        if self._runner is None or env_cfg != self._env_cfg:
            self.close()
            self._runner = RolloutRunner(env_cfg, num_workers=min(self.num_workers, len(self.plan)))
            self._env_cfg = env_cfg
        return self._runner

    def __call__(self, policy: PolicyLike, step: int) -> dict[str, float]:
        old_emb = policy.embodiment
        policy.embodiment = self._embodiment(policy)
        try:
            return self._evaluate(policy, step)
        finally:
            policy.embodiment = old_emb

    def _evaluate(self, policy: PolicyLike, step: int) -> dict[str, float]:
        import torch

        from openlbm.envs.rollout import EpisodeSpec

        runner = self._runner_for(policy)
        module = policy if isinstance(policy, torch.nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        seeded = hasattr(policy, "noise_seed")
        old_seed = getattr(policy, "noise_seed", None)
        if seeded:
            policy.noise_seed = self.noise_seed  # type: ignore[attr-defined]
        try:
            specs = [EpisodeSpec(e.episode_id, e.task, e.seed, e.instruction) for e in self.plan]
            with torch.inference_mode():
                results = runner.run(policy, specs, progress=self.progress)
        finally:
            if module is not None:
                module.train(was_training)
            if seeded:
                policy.noise_seed = old_seed  # type: ignore[attr-defined]
            policy.reset()
        metrics: dict[str, float] = {}
        for task in self.tasks:
            rs = [r for r in results if r.task == task]
            metrics[f"eval/{task}"] = sum(r.success for r in rs) / len(rs)
        metrics["eval/success"] = sum(r.success for r in results) / len(results)
        if self.out_dir is not None:
            self._write(step, results)
        log.info("step %d: eval success %.1f%%", step, 100 * metrics["eval/success"])
        return metrics

    def _write(self, step: int, results: list[Any]) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"step_{step:08d}.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps({"episode_id": r.episode_id, "task": r.task, "seed": r.seed,
                                    "instruction": r.instruction, "success": bool(r.success), "steps": r.steps,
                                    "seconds": round(r.seconds, 4), "error": r.error}) + "\n")

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> TrainEvalFn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # workers are daemons anyway; this just stops them early
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to report to
            self.close()

