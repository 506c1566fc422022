from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

pytest.importorskip("gym_aloha")

from openlbm.envs.aloha import PRIVILEGED_DIM, AlohaConfig, embodiment, initial_object_pose  # noqa: E402
from openlbm.envs.aloha_expert import AlohaExpert  # noqa: E402
from openlbm.envs.rollout import EpisodeSpec, RolloutRunner  # noqa: E402
from openlbm.envs.tasks import (  # noqa: E402
    ALOHA_TASKS,
    TASK_SETS,
    instruction_for,
    instructions,
    resolve_tasks,
    suite_of,
)
from openlbm.types import Observation  # noqa: E402

NO_RENDER = AlohaConfig(cameras=())


def _specs(tasks: Sequence[str], seeds: Sequence[int]) -> list[EpisodeSpec]:
    return [EpisodeSpec(f"{t}/{s}", t, s, instruction_for(t, s)) for t in tasks for s in seeds]


def test_tasks_instructions_and_suite_plumbing() -> None:
    assert set(ALOHA_TASKS) == {"transfer-cube", "insertion"} and TASK_SETS["aloha"] == ALOHA_TASKS
    for task in ALOHA_TASKS:
        train, held = instructions(task, "train"), instructions(task, "heldout")
        assert len(train) == 4 and len(held) == 2 and not set(train) & set(held)
        assert suite_of(task) == "aloha"
    assert suite_of("drawer-open-v3") == "metaworld"
    assert resolve_tasks("aloha", suite="aloha") == ["transfer-cube", "insertion"]
    with pytest.raises(ValueError, match="not in the aloha suite.*belong to metaworld"):
        resolve_tasks("quickstart", suite="aloha")
    with pytest.raises(ValueError, match="not in the metaworld suite"):
        resolve_tasks("insertion", suite="metaworld")


def test_env_reset_step_render_and_instruction() -> None:
    cfg = AlohaConfig(image_size=(32, 48), max_steps=3)
    env = cfg.build("insertion")
    try:
        frame, info = env.reset(seed=11, options={"instruction": "put the peg in"})
        assert frame.instruction == "put the peg in" and frame.task == "insertion" and info["seed"] == 11
        assert set(frame.images) == {"top", "left_wrist", "right_wrist"}
        for img in frame.images.values():
            assert img.shape == (32, 48, 3) and img.dtype == np.uint8 and img.std() > 1.0  # a scene, not a blank
        assert not np.array_equal(frame.images["top"], frame.images["left_wrist"])
        assert frame.state.shape == (14,) and frame.state.dtype == np.float32
        assert frame.privileged is not None and frame.privileged.shape == (PRIVILEGED_DIM,)
        np.testing.assert_allclose(frame.privileged[14:], initial_object_pose("insertion", 11), atol=1e-6)
        # Command the right arm's waist away from the start pose: the measured joint follows it.
        target = frame.state.copy()
        target[7] += 0.3
        for _ in range(3):
            frame, reward, terminated, truncated, info = env.step(target)
        assert frame.state[7] > 0.05 and abs(frame.state[0]) < 0.02
        assert truncated and not terminated and reward == 0.0 and info == {"success": False, "steps": 3}
        with pytest.raises(RuntimeError, match="max_steps"):
            env.step(target)
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"shape \(14,\)"):
            env.step(np.zeros(4, dtype=np.float32))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full(14, np.nan, dtype=np.float32))
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown ALOHA camera"):
        AlohaConfig(cameras=("corner2",))
    spec = embodiment(cfg)
    assert (spec.name, spec.state_dim, spec.action_dim, spec.fps, spec.image_size) == ("aloha_bimanual", 14, 14, 50.0,
                                                                                      (32, 48))


def test_every_aspect_keeps_the_horizontal_view() -> None:
    """MuJoCo fixes the vertical field of view; the adapter keeps gym-aloha's 4:3 horizontal one instead, so a 2:1
    image is exactly the centre band of a square one of the same width (at a fixed vertical view it was a squashed,
    zoomed-in picture: mean pixel difference 65 against the band)."""
    from openlbm.envs.aloha import fovy_for

    assert fovy_for(78.0, (480, 640)) == pytest.approx(78.0) and fovy_for(78.0, (64, 64)) > 78.0
    images = {}
    for size in [(64, 64), (32, 64)]:
        env = AlohaConfig(cameras=("top",), image_size=size).build("transfer-cube")
        try:
            images[size] = env.reset(seed=0)[0].images["top"].astype(int)
        finally:
            env.close()
    band = images[(64, 64)][16:48]  # [32, 64, 3]: the square image's centre rows
    assert np.abs(band - images[(32, 64)]).mean() < 1.0
    assert np.abs(images[(64, 64)][:32] - images[(32, 64)]).mean() > 10  # the comparison can tell images apart


def test_initial_state_is_a_function_of_the_seed() -> None:
    cfg = AlohaConfig(cameras=("top",), image_size=(24, 24))
    a, b = cfg.build("transfer-cube", seed=5), cfg.build("transfer-cube")
    try:
        fa, _ = a.reset()  # the constructor's seed
        b.reset(seed=6)
        for _ in range(5):
            b.step(b.reset(seed=6)[0].state)
        fb, _ = b.reset(seed=5)  # a reused env after other episodes
        np.testing.assert_array_equal(fa.privileged, fb.privileged)
        np.testing.assert_array_equal(fa.images["top"], fb.images["top"])
        fc, _ = b.reset(seed=6)
        assert not np.allclose(fc.privileged[14:17], fa.privileged[14:17])
        # Same placement as gym-aloha's own AlohaEnv.reset(seed=...) (its RandomState sampler).
        from gym_aloha.utils import sample_box_pose

        np.testing.assert_allclose(fa.privileged[14:21], sample_box_pose(5))
    finally:
        a.close()
        b.close()


def test_expert_succeeds_through_the_runner() -> None:
    # with the eased start (ease_in): seeds 0..29 measured 30/30 transfer-cube, 27/30 insertion (docs/simulation.md)
    specs = _specs(ALOHA_TASKS, [1, 2, 3])
    with RolloutRunner(NO_RENDER, num_workers=2) as runner:
        results = runner.run(AlohaExpert(NO_RENDER), specs, progress=False, record_trajectory=True)
    for res in results:
        assert res.error is None and res.success, res
        assert res.trajectory is not None and res.trajectory["action"].shape == (res.steps, 14)
        assert res.trajectory["state"].shape == (res.steps, 14) and res.trajectory["success"][-1]


@pytest.mark.slow
def test_expert_succeeds_on_several_rendered_episodes() -> None:
    cfg = AlohaConfig(image_size=(32, 32))
    specs = _specs(ALOHA_TASKS, range(4))
    with RolloutRunner(cfg, num_workers=2) as runner:
        results = runner.run(AlohaExpert(cfg), specs, progress=False, record_video=True)
    assert all(r.error is None and r.success for r in results), [(r.episode_id, r.error) for r in results]
    assert all(r.frames is not None and r.frames.shape[1:] == (32, 32, 3) for r in results)


class _PaddedHold:
    """Holds the start pose in the first 14 dims and returns 6 extra (padded) dims the env must never see."""

    def __init__(self, dims: int) -> None:
        self.embodiment = embodiment(NO_RENDER)
        self.dims = dims

    def select_action(self, obs: Observation) -> Tensor:
        out = torch.full((obs.batch_size, self.dims), 99.0)
        out[:, : min(14, self.dims)] = obs.state[:, -1, : min(14, self.dims)]
        return out

    def reset(self, indices: Sequence[int] | None = None) -> None:
        pass


def test_runner_takes_the_action_dim_from_the_embodiment() -> None:
    cfg = AlohaConfig(cameras=(), max_steps=4)
    with RolloutRunner(cfg, num_workers=1) as runner:
        (res,) = runner.run(_PaddedHold(20), _specs(["transfer-cube"], [0]), progress=False, record_trajectory=True)
        assert res.error is None and res.steps == 4 and res.trajectory is not None
        assert res.trajectory["action"].shape == (4, 14) and (res.trajectory["action"] < 50).all()
        with pytest.raises(ValueError, match=r">=14\] for aloha_bimanual"):
            runner.run(_PaddedHold(4), _specs(["transfer-cube"], [0]), progress=False)


def _lbm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=900)


def test_generate_suite_aloha_writes_a_valid_dataset(tmp_path: Path) -> None:
    pytest.importorskip("openlbm.data.writer")
    out = tmp_path / "aloha"
    proc = _lbm("data", "generate", "--out", str(out), "--suite", "aloha", "--tasks", "transfer-cube",
                "--episodes-per-task", "1", "--cameras", "top", "--size", "48", "--height", "32", "--workers", "1",
                "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.top"]["shape"] == [32, 48, 3]  # (height, width, channels)
    assert info["fps"] == 50 and info["robot_type"] == "aloha_bimanual"
    assert info["features"]["action"]["shape"] == [14] and info["features"]["observation.state"]["shape"] == [14]
    assert "observation.images.top" in info["features"] and info["total_episodes"] == 1
    summary = json.loads((out / "meta" / "generation.json").read_text())
    assert summary["config"]["suite"] == "aloha" and summary["tasks"]["transfer-cube"]["kept"] == 1
    proc = _lbm("data", "validate", str(out))
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    # A Meta-World task under --suite aloha is refused with one line, before anything is written.
    bad = _lbm("data", "generate", "--out", str(tmp_path / "bad"), "--suite", "aloha", "--tasks", "reach-v3")
    assert bad.returncode != 0 and "not in the aloha suite" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad").exists()
    odd = _lbm("data", "generate", "--out", str(tmp_path / "odd"), "--suite", "aloha", "--size", "32", "--height", "33")
    assert odd.returncode != 0 and "--height must be an even number" in odd.stdout + odd.stderr


def test_eval_suite_aloha_runs_the_expert(tmp_path: Path) -> None:
    from openlbm.eval.runner import EvalConfig, evaluate

    assert EvalConfig().out_dir().name == "expert-quickstart-train-s0"  # Meta-World stays the default suite
    assert EvalConfig(suite="aloha").out_dir().name == "expert-aloha-train-s0"
    cfg = EvalConfig(suite="aloha", tasks="transfer-cube", episodes_per_task=1, num_workers=1, cameras=("top",),
                     image_size=(24, 24), record_video=False, report=False, progress=False, out=tmp_path / "ev")
    summary = evaluate(cfg)
    assert (summary.overall.successes, summary.overall.n) == (1, 1)
    meta = json.loads((tmp_path / "ev" / "eval_config.json").read_text())
    assert meta["suite"] == "aloha" and meta["embodiment"]["action_dim"] == 14
    with pytest.raises(ValueError, match="not in the aloha suite"):
        evaluate(EvalConfig(suite="aloha", tasks="drawer-open-v3", out=tmp_path / "bad", progress=False))


@pytest.mark.parametrize("task", ALOHA_TASKS)
def test_expert_replay_starts_smoothly(task: str) -> None:
    """The planning scene snaps its arms onto their first mocap targets; replayed raw, that jump made the shoulder
    servo overshoot its command by 0.43 rad (measured -2.13 rad for a -1.70 rad target). Over the first 20 steps every
    measured arm joint must stay within 0.05 rad of the range its commands have covered so far."""
    from openlbm.envs.aloha_expert import ARM_JOINTS, ease_in

    env = NO_RENDER.build(task)
    try:
        frame, _ = env.reset(seed=2)
        plan = AlohaExpert(NO_RENDER).plan(task, frame.privileged)
        measured = []
        for t in range(20):
            measured.append(env.step(plan[t])[0].state)
    finally:
        env.close()
    cmd, meas = plan[:20, ARM_JOINTS], np.stack(measured)[:, ARM_JOINTS]  # [20, 12] each
    lo, hi = np.minimum.accumulate(cmd), np.maximum.accumulate(cmd)
    overshoot = np.maximum(meas - hi, lo - meas).max()
    assert overshoot < 0.05, overshoot
    assert np.abs(np.diff(plan[:21, ARM_JOINTS], axis=0)).max() < 0.1  # no jump left in the commands themselves
    # ease_in: start and the plan's pose at the ramp's end kept, zero first step, grippers untouched
    raw = np.zeros((30, 14), dtype=np.float32)
    raw[1:] = 1.0
    eased = ease_in(raw, 20)
    assert eased[0].max() == 0 and abs(eased[1, 1]) < 0.01 and (eased[20:] == 1).all() and (eased[1:, 6] == 1).all()
