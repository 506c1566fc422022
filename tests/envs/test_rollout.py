from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import numpy as np
import pytest
from torch import Tensor

from openlbm.envs.expert import ScriptedExpert
from openlbm.envs.metaworld import MetaWorldConfig
from openlbm.envs.rollout import EpisodeSpec, RolloutRunner
from openlbm.envs.tasks import instruction_for
from openlbm.types import Observation, observation_from_frames

NO_RENDER = MetaWorldConfig(cameras=(), max_steps=150)


def _specs(tasks: Sequence[str], seeds: Sequence[int]) -> list[EpisodeSpec]:
    return [EpisodeSpec(f"{t}/{s}", t, s, instruction_for(t, s)) for t in tasks for s in seeds]


def _in_process(spec: EpisodeSpec, cfg: MetaWorldConfig) -> tuple[bool, int]:
    """Reference: the expert stepping one env directly, no workers."""
    expert, env = ScriptedExpert(cfg), cfg.build(spec.task, spec.seed)
    frame, _ = env.reset(seed=spec.seed)
    try:
        for t in range(1, cfg.max_steps + 1):
            action = expert.select_action(observation_from_frames([frame], "metaworld_sawyer"))[0].numpy()
            frame, _, _, truncated, info = env.step(action)
            if info["success"] or truncated:
                return info["success"], t
    finally:
        env.close()
    raise AssertionError("unreachable")


def test_expert_through_runner_matches_expert_alone() -> None:
    specs = _specs(["button-press-topdown-v3", "drawer-open-v3", "push-back-v3"], range(6))
    with RolloutRunner(NO_RENDER, num_workers=2) as runner:
        results = runner.run(ScriptedExpert(NO_RENDER), specs, progress=False)
    assert [r.episode_id for r in results] == [s.episode_id for s in specs]
    for spec, res in zip(specs, results, strict=True):
        assert res.error is None
        assert (res.success, res.steps) == _in_process(spec, NO_RENDER), spec
    assert sum(r.success for r in results[:12]) == 12  # button press and drawer open: ~100% experts


def test_video_frames_are_recorded_per_step() -> None:
    cfg = MetaWorldConfig(cameras=("corner2", "gripperPOV"), image_size=(24, 32), max_steps=10)
    with RolloutRunner(cfg, num_workers=1) as runner:
        (res,) = runner.run(ScriptedExpert(cfg), _specs(["drawer-open-v3"], [0]), record_video=True,
                            progress=False, record_trajectory=True)
    assert not res.success and res.steps == 10 and res.frames is not None
    assert res.frames.shape == (11, 24, 32, 3) and res.frames.dtype == np.uint8
    assert res.trajectory is not None and res.trajectory["images.gripperPOV"].shape == (10, 24, 32, 3)
    assert res.trajectory["action"].shape == (10, 4) and res.trajectory["success"].shape == (10,)
    assert res.trajectory["privileged"].shape == (10, 39)  # the full observation, for caption facts


class _Saboteur(ScriptedExpert):
    """The real expert, except that on call ``at`` it sends ``sig`` to the worker of slot 0."""

    def __init__(self, runner: RolloutRunner, at: int, sig: int) -> None:
        super().__init__(NO_RENDER)
        self.runner, self.at, self.sig, self.calls = runner, at, sig, 0

    def select_action(self, obs: Observation) -> Tensor:
        self.calls += 1
        if self.calls == self.at:
            os.kill(self.runner.worker_pids[0], self.sig)
        return super().select_action(obs)


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGKILL, "worker crashed"), (signal.SIGSTOP, "timed out")])
def test_dead_or_stuck_worker_is_replaced_and_counted_as_error(sig: int, expected: str) -> None:
    specs = _specs(["button-press-topdown-v3"], range(5))
    with RolloutRunner(NO_RENDER, num_workers=2, step_timeout_s=3.0) as runner:
        stuck_pid = runner.worker_pids[0]
        try:
            results = runner.run(_Saboteur(runner, at=10, sig=sig), specs, progress=False)
        finally:
            if sig == signal.SIGSTOP:  # the runner SIGKILLs it; make sure nothing is left stopped
                with __import__("contextlib").suppress(ProcessLookupError):
                    os.kill(stuck_pid, signal.SIGKILL)
        assert runner.num_replaced == 1 and stuck_pid not in runner.worker_pids
    assert len(results) == 5
    errors = [r for r in results if r.error is not None]
    assert len(errors) == 1 and expected in errors[0].error and not errors[0].success
    assert all(r.success for r in results if r.error is None)


def test_env_exception_is_reported_not_fatal() -> None:
    class NaNPolicy(ScriptedExpert):
        def select_action(self, obs: Observation) -> Tensor:
            out = super().select_action(obs)
            out[:, 0] = float("nan")
            return out

    with RolloutRunner(NO_RENDER, num_workers=1) as runner:
        bad = runner.run(NaNPolicy(NO_RENDER), _specs(["reach-v3"], [0]), progress=False)
        good = runner.run(ScriptedExpert(NO_RENDER), _specs(["reach-v3"], [0]), progress=False)
        assert runner.num_replaced == 0
    assert bad[0].error is not None and "NaN" in bad[0].error
    assert good[0].success


class _Recorder:
    """Delegates to a learned policy, recording the actions it returns and the frames it announces."""

    def __init__(self, policy: object) -> None:
        self.policy, self.actions, self.announced = policy, [], []
        self.embodiment = policy.embodiment  # type: ignore[attr-defined]

    def select_action(self, obs: Observation) -> Tensor:
        out = self.policy.select_action(obs)  # type: ignore[attr-defined]
        self.actions.append(out.clone())
        return out

    def reset(self, indices: Sequence[int] | None = None) -> None:
        self.policy.reset(indices)  # type: ignore[attr-defined]

    def frames_needed(self) -> list[bool]:
        self.announced.append(self.policy.frames_needed())  # type: ignore[attr-defined]
        return self.announced[-1]


def test_unread_frames_are_not_rendered_and_the_episodes_are_the_same() -> None:
    """Skipping the frames a chunked policy never reads changes no action (the policy's output depends on its
    images), and most frames are skipped; an episode whose video is recorded still renders every frame."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))
    from policy_helpers import make_stats, randomize_zero_init

    from openlbm.configs.presets import policy_preset as preset
    from openlbm.envs.metaworld import embodiment

    cfg = MetaWorldConfig(cameras=("corner2",), image_size=(32, 32), max_steps=30)
    emb = embodiment(cfg)
    runs = {}
    for skip in (False, True):
        torch.manual_seed(0)
        policy = randomize_zero_init(preset("debug").build([emb], {emb.name: make_stats(emb)})).eval()
        rec = _Recorder(policy)
        with RolloutRunner(cfg, num_workers=2, skip_unread_frames=skip) as runner:
            results = runner.run(rec, _specs(["reach-v3", "drawer-open-v3"], [0]), progress=False,
                                 record_video=lambda spec, on=skip: on and spec.task == "reach-v3")
        runs[skip] = (rec, [(r.success, r.steps, r.error) for r in results])
        if skip:
            assert results[1].frames is None and results[0].frames is not None
            clip = results[0].frames.astype(int)  # [31, 32, 32, 3]: every frame, none a stale copy of the last
            assert clip.shape == (31, 32, 32, 3) and (abs(clip[1:] - clip[:-1]).sum(axis=(1, 2, 3)) > 0).all()
    (full, res_full), (skipped, res_skipped) = runs[False], runs[True]
    assert res_full == res_skipped and all(e is None for *_, e in res_full)
    assert len(full.actions) == len(skipped.actions) == 30
    for a, b in zip(full.actions, skipped.actions, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not full.announced  # skipping off: the policy is not even asked
    announced = [x for row in skipped.announced for x in row]
    assert 0.2 * len(announced) < sum(announced) < 0.7 * len(announced)  # debug: 4-step chunks, 2-frame history


def test_env_step_without_rendering_returns_no_images() -> None:
    cfg = MetaWorldConfig(cameras=("corner2",), image_size=(16, 16), max_steps=5)
    env = cfg.build("reach-v3", 0)
    try:
        frame, _ = env.reset(seed=0)
        assert set(frame.images) == {"corner2"}
        blind, *_ = env.step(np.zeros(4, np.float32), render=False)
        seen, *_ = env.step(np.zeros(4, np.float32))
        assert blind.images == {} and set(seen.images) == {"corner2"} and blind.state.shape == (4,)
    finally:
        env.close()
