"""Meta-World v3 as a gymnasium environment speaking the openlbm contract (:class:`~openlbm.types.EnvFrame`).

One environment = one task. Initial states are a pure function of ``(task, seed)``: Meta-World draws the object and
goal positions (its ``rand_vec``) from the env's seeded ``np_random`` (we switch it to ``seeded_rand_vec`` mode), and
``reset(seed=s)`` reseeds that generator, so a fresh env and a reused one give bit-identical first frames.

The goal position is *observable* in the privileged state (``_partially_observable = False``, as in Meta-World's
MT benchmarks): the scripted experts read it, and learned policies never see the privileged vector, only pixels,
proprioception and the instruction. So the goal must be inferred from the images, which is what we want.

Rendering uses one ``mujoco.Renderer`` (one GL context) per env and switches camera per image, with the CPU-friendly
visual settings from DESIGN.md (no MSAA, no shadows, no reflections: ~8x faster on llvmpipe). Cameras that MuJoCo
renders upside down in Meta-World's scene (the ``corner*`` ones) are rotated 180 degrees so the table is at the
bottom; a rotation (not a mirror) keeps left and right where the robot sees them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from openlbm.envs import METAWORLD_CAMERAS, check_env_fields
from openlbm.envs.tasks import ALL_TASKS, instructions
from openlbm.types import EmbodimentSpec, EnvFrame

log = logging.getLogger(__name__)

MOVED_CAMERAS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "corner2_lerobot": ("corner2", (0.75, 0.075, 0.7)),
}
"""Extra cameras: ``name -> (scene camera, position)``, the scene camera moved to ``position`` (world frame, its
orientation kept). ``corner2_lerobot`` is corner2 where LeRobot's Meta-World env puts it for its MT50 dataset and
evaluations (after Seo et al., "Masked World Models", 2022): nearer the table, so objects span about twice the
pixels; the image of the MT50 benchmark protocol (docs/benchmarks.md)."""
CAMERAS: tuple[str, ...] = (
    "topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV", *MOVED_CAMERAS,
)
"""Cameras defined in every Meta-World v3 scene, and the :data:`MOVED_CAMERAS`."""

MAX_EPISODE_STEPS = 500
"""Meta-World's own hard limit (``max_path_length``); stepping past it raises inside Meta-World."""

EMBODIMENT_NAME = "metaworld_sawyer"
GL_HELP = (
    "MuJoCo could not create an OpenGL context for offscreen rendering. On a headless machine install the EGL/Mesa "
    "packages (Debian/Ubuntu: `apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri`) and use MUJOCO_GL=egl "
    "(openlbm sets it when DISPLAY is unset; MUJOCO_GL=osmesa needs libosmesa6 instead)."
)


@dataclass(frozen=True)
class MetaWorldConfig:
    """How Meta-World environments are built: cameras, image size, episode length."""

    cameras: tuple[str, ...] = METAWORLD_CAMERAS
    """Cameras rendered every step, in order (the first one is used for videos). Empty = no rendering."""
    image_size: tuple[int, int] = (128, 128)
    """``(height, width)`` of every rendered image, in pixels (8..1024)."""
    max_steps: int = 200
    """Time limit per episode (Meta-World allows at most 500; scripted experts need < 150 on almost every task)."""
    terminate_on_success: bool = False
    """If True, ``step`` returns ``terminated=True`` once the task succeeds (the rollout runner stops at success
    on its own either way)."""
    fast_render: bool = True
    """Disable MSAA, shadows and reflections (about 8x faster on a CPU renderer; slightly flatter images)."""
    fps: float = 80.0
    """Nominal control frequency written into datasets (Meta-World: 5 substeps of 2.5 ms = 80 Hz)."""

    def __post_init__(self) -> None:
        check_env_fields("Meta-World", self.cameras, CAMERAS, self.image_size, self.max_steps, MAX_EPISODE_STEPS)

    def build(self, task: str, seed: int = 0) -> MetaWorldEnv:
        """An environment for ``task`` whose first ``reset()`` (without a seed) uses ``seed``."""
        return MetaWorldEnv(self, task, seed)

    def embodiment(self) -> EmbodimentSpec:
        return embodiment(self)


def embodiment(cfg: MetaWorldConfig | None = None) -> EmbodimentSpec:
    """The Sawyer arm as seen by a policy: the config's cameras, 4-d state (hand xyz + gripper), 4-d action."""
    cfg = cfg or MetaWorldConfig()
    return EmbodimentSpec(
        name=EMBODIMENT_NAME,
        cameras=tuple(cfg.cameras),
        image_size=tuple(cfg.image_size),  # type: ignore[arg-type]
        state_dim=4,
        action_dim=4,
        fps=cfg.fps,
    )


def _make_raw_env(task: str) -> Any:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task](render_mode=None)
    env._partially_observable = False
    del env.sawyer_observation_space  # cached_property: recompute with the goal included
    env._set_task_called = True
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


def _apply_fast_render(model: Any) -> None:
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0


class MetaWorldEnv(gym.Env):
    """One Meta-World task; observations are :class:`EnvFrame`, ``info["success"]`` is a bool.

    ``reset(seed=s, options={"instruction": text})`` fixes the initial state by ``s`` and the instruction carried
    in the frames (default: the task's canonical instruction).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, cfg: MetaWorldConfig, task: str, seed: int = 0) -> None:
        if task not in ALL_TASKS:
            raise ValueError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(ALL_TASKS)}")
        self.cfg = cfg
        self.task = task
        self.instruction = instructions(task, "train")[0]
        self._default_seed = int(seed)
        self._seeded = False
        self._steps = 0
        self._last_obs: np.ndarray | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = _make_raw_env(task)
        self._env.max_path_length = MAX_EPISODE_STEPS
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = self._env.sawyer_observation_space
        self._renderer: Any = None
        self._rotate: dict[str, bool] = {}
        if cfg.cameras:
            self._init_renderer()

    # -- rendering -------------------------------------------------------------------------------------------------
    def _init_renderer(self) -> None:
        import mujoco

        model, data = self._env.model, self._env.data
        if self.cfg.fast_render:
            _apply_fast_render(model)
        h, w = self.cfg.image_size
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), w)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), h)
        try:
            self._renderer = mujoco.Renderer(model, height=h, width=w)
        except Exception as e:  # mujoco raises a bare Exception/RuntimeError from the GL layer
            raise RuntimeError(f"{GL_HELP}\n(underlying error: {type(e).__name__}: {e})") from e
        mujoco.mj_forward(model, data)
        for cam in self.cfg.cameras:
            scene_cam = MOVED_CAMERAS[cam][0] if cam in MOVED_CAMERAS else cam
            up_world = data.cam(scene_cam).xmat.reshape(3, 3)[:, 1]  # camera's image-up axis in world coordinates
            self._rotate[cam] = bool(up_world[2] < 0.0)

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Render every configured camera now: ``{camera: uint8 [H, W, 3]}`` (upright)."""
        images: dict[str, np.ndarray] = {}
        if self._renderer is None:
            return images
        for cam in self.cfg.cameras:
            if cam in MOVED_CAMERAS:
                images[cam] = self._render_moved(cam)
                continue
            self._renderer.update_scene(self._env.data, camera=cam)
            img = self._renderer.render()
            images[cam] = np.ascontiguousarray(img[::-1, ::-1]) if self._rotate[cam] else img.copy()
        return images

    def _render_moved(self, cam: str) -> np.ndarray:
        """Render a :data:`MOVED_CAMERAS` entry: its scene camera moved for this one render and put back, so the
        physics and every other camera see the unmodified model."""
        import mujoco

        scene_cam, position = MOVED_CAMERAS[cam]
        model, data = self._env.model, self._env.data
        cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, scene_cam)
        saved = model.cam_pos[cid].copy()
        try:
            model.cam_pos[cid] = position
            mujoco.mj_camlight(model, data)  # camera poses in ``data`` follow the model's
            self._renderer.update_scene(data, camera=scene_cam)
            img = self._renderer.render()
        finally:
            model.cam_pos[cid] = saved
            mujoco.mj_camlight(model, data)
        return np.ascontiguousarray(img[::-1, ::-1]) if self._rotate[cam] else img.copy()

    def render(self) -> np.ndarray | None:  # gymnasium API: the first camera
        imgs = self.render_cameras()
        return imgs[self.cfg.cameras[0]] if imgs else None

    # -- gym API ---------------------------------------------------------------------------------------------------
    def _frame(self, obs: np.ndarray, render: bool = True) -> EnvFrame:
        return EnvFrame(
            images=self.render_cameras() if render else {},
            state=np.asarray(obs[:4], dtype=np.float32),
            instruction=self.instruction,
            task=self.task,
            privileged=np.asarray(obs, dtype=np.float64).copy(),
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[EnvFrame, dict]:
        if seed is None and not self._seeded:
            seed = self._default_seed
        if seed is not None:
            self._env.seed(int(seed))
            self._seeded = True
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, _ = self._env.reset()
        self._steps = 0
        self._last_obs = obs
        return self._frame(obs), {"success": False, "task": self.task, "seed": seed}

    def step(self, action: np.ndarray, *, render: bool = True) -> tuple[EnvFrame, float, bool, bool, dict[str, Any]]:
        """Gymnasium's step; ``render=False`` skips the cameras (the frame's ``images`` are empty) for a caller
        that will not read this frame's images (:meth:`openlbm.envs.rollout.RolloutRunner.run`)."""
        if self._last_obs is None:
            raise RuntimeError(f"{self.task}: call reset() before step()")
        if self._steps >= self.cfg.max_steps:
            raise RuntimeError(f"{self.task}: episode hit max_steps={self.cfg.max_steps}; call reset()")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (4,):
            raise ValueError(f"{self.task}: action must have shape (4,) = (dx, dy, dz, gripper), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{self.task}: action contains NaN or inf: {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, _, _, info = self._env.step(a)
        self._steps += 1
        self._last_obs = obs
        success = bool(info.get("success", False))
        terminated = success and self.cfg.terminate_on_success
        truncated = self._steps >= self.cfg.max_steps
        out_info = {"success": success, "steps": self._steps}
        return self._frame(obs, render), float(reward), terminated, truncated, out_info

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
