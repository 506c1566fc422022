from __future__ import annotations

import numpy as np
import pytest

from openlbm.envs.metaworld import MetaWorldConfig, embodiment
from openlbm.envs.tasks import ALL_TASKS, TASK_SETS


def test_every_task_resets_renders_and_steps() -> None:
    cfg = MetaWorldConfig(cameras=("corner2",), image_size=(32, 32), max_steps=3)
    for task in ALL_TASKS:
        env = cfg.build(task, seed=0)
        try:
            frame, info = env.reset()
            assert frame.images["corner2"].shape == (32, 32, 3) and frame.images["corner2"].dtype == np.uint8
            assert frame.images["corner2"].std() > 1.0, f"{task}: blank image"
            assert frame.state.shape == (4,) and frame.state.dtype == np.float32
            assert frame.privileged is not None and frame.privileged.shape == (39,)
            assert np.abs(frame.privileged[-3:]).sum() > 0, f"{task}: goal should be observable to the expert"
            assert frame.task == task and frame.instruction
            truncated = False
            for _ in range(3):
                frame, reward, terminated, truncated, info = env.step(np.array([0.1, -0.1, 0.1, 1.0], np.float32))
                assert isinstance(info["success"], bool) and np.isfinite(reward)
            assert truncated
        finally:
            env.close()


def test_moved_camera_renders_nearer_and_leaves_the_scene_camera_alone() -> None:
    """corner2_lerobot is corner2 at LeRobot's MT50 position: same orientation, nearer the table (the robot's
    red links cover more of the image), and rendering it changes neither corner2's image nor the physics."""
    alone = _first(MetaWorldConfig(cameras=("corner2",), image_size=(48, 48)), "reach-v3", 3)
    both = _first(MetaWorldConfig(cameras=("corner2", "corner2_lerobot"), image_size=(48, 48)), "reach-v3", 3)
    near, far = both.images["corner2_lerobot"], both.images["corner2"]
    np.testing.assert_array_equal(far, alone.images["corner2"])
    np.testing.assert_array_equal(both.state, alone.state)

    def red(img: np.ndarray) -> float:  # the Sawyer's links: saturated red pixels
        rgb = img.astype(int)
        return float(((rgb[..., 0] > 120) & (rgb[..., 0] > 2 * rgb[..., 1]) & (rgb[..., 0] > 2 * rgb[..., 2])).mean())

    assert red(near) > 1.5 * red(far)
    # rendered first, then stepped: corner2 and the physics stay those of an env without the moved camera
    frames = []
    for cams in (("corner2_lerobot", "corner2"), ("corner2",)):
        env = MetaWorldConfig(cameras=cams, image_size=(48, 48)).build("reach-v3", 3)
        try:
            env.reset()
            frames.append([env.step(np.array([0.3, 0.0, 0.0, 0.0], np.float32))[0] for _ in range(3)])
        finally:
            env.close()
    for a, b in zip(*frames, strict=True):
        np.testing.assert_array_equal(a.images["corner2"], b.images["corner2"])
        np.testing.assert_array_equal(a.state, b.state)


def _first(cfg: MetaWorldConfig, task: str, seed: int):
    env = cfg.build(task, seed)
    try:
        return env.reset()[0]
    finally:
        env.close()


@pytest.mark.parametrize("task", ["pick-place-v3", "drawer-open-v3"])
def test_initial_state_is_a_function_of_task_and_seed(task: str) -> None:
    cfg = MetaWorldConfig(image_size=(48, 48))
    a, b, c = _first(cfg, task, 3), _first(cfg, task, 3), _first(cfg, task, 4)
    np.testing.assert_array_equal(a.privileged, b.privileged)
    for cam in cfg.cameras:
        np.testing.assert_array_equal(a.images[cam], b.images[cam])
    assert not np.array_equal(a.privileged, c.privileged)
    # A reused env reseeded after an episode lands in exactly the same state.
    env = cfg.build(task, 0)
    env.reset(seed=4)
    for _ in range(5):
        env.step(np.ones(4, np.float32))
    again = env.reset(seed=3)[0]
    env.close()
    np.testing.assert_array_equal(again.privileged, a.privileged)
    np.testing.assert_array_equal(again.images[cfg.cameras[0]], a.images[cfg.cameras[0]])


def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown Meta-World camera.*corner2"):
        MetaWorldConfig(cameras=("front",))
    with pytest.raises(ValueError, match="image_size"):
        MetaWorldConfig(image_size=(0, 64))
    with pytest.raises(ValueError, match="max_steps"):
        MetaWorldConfig(max_steps=501)
    with pytest.raises(ValueError, match="unknown Meta-World task.*reach-v3"):
        MetaWorldConfig(cameras=()).build("reach")
    env = MetaWorldConfig(cameras=()).build("reach-v3")
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, np.nan, 0, 0], np.float32))
    env.step(np.full(4, 5.0, np.float32))  # out-of-range actions are clipped, not rejected
    env.close()


def test_embodiment_matches_config() -> None:
    emb = embodiment(MetaWorldConfig(cameras=("corner2",), image_size=(64, 96)))
    assert emb.name == "metaworld_sawyer" and emb.cameras == ("corner2",)
    assert emb.image_size == (64, 96) and emb.state_dim == 4 and emb.action_dim == 4
    assert set(TASK_SETS["quickstart"]) <= set(ALL_TASKS)
