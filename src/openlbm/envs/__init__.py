"""openlbm.envs: simulator adapters, task instructions, scripted experts and parallel rollout workers.

MuJoCo picks its OpenGL backend when it is first imported, so the headless default (EGL) is chosen here, before
any submodule imports ``mujoco`` or ``metaworld``. An explicit ``MUJOCO_GL`` always wins.
"""

import os
from collections.abc import Sequence

METAWORLD_CAMERAS: tuple[str, ...] = ("corner2_lerobot", "gripperPOV")
"""The default cameras of every Meta-World command: the scene camera where LeRobot's MT50 protocol puts it and the
wrist camera. Nearer the table than the scene's own ``corner2``, it lifted plate-slide from 13 to 18 of 25 on the
same starts (docs/results.md). Here, not in ``envs.metaworld``, so the CLI reads it without importing a simulator."""

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"


def check_env_fields(
    robot: str, cameras: Sequence[str], valid_cameras: Sequence[str], image_size: Sequence[int], max_steps: int,
    max_episode_steps: int,
) -> None:
    """The checks every suite's env config runs on its shared fields (one line naming the field on failure)."""
    unknown = [c for c in cameras if c not in valid_cameras]
    if unknown:
        raise ValueError(f"unknown {robot} camera(s) {unknown}; valid cameras: {', '.join(valid_cameras)}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"duplicate camera in {tuple(cameras)}")
    if len(image_size) != 2 or not all(isinstance(s, int) and 8 <= s <= 1024 for s in image_size):
        raise ValueError(f"image_size must be (height, width) with integers in 8..1024, got {tuple(image_size)}")
    if not 1 <= max_steps <= max_episode_steps:
        raise ValueError(f"max_steps must be in 1..{max_episode_steps} ({robot}'s limit), got {max_steps}")
