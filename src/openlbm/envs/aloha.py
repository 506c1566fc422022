"""Bimanual ALOHA (PyPI ``gym-aloha``) as a gymnasium environment speaking the openlbm contract (:class:`EnvFrame`).

Two ViperX 6-DoF arms with parallel grippers, joint-position control at 50 Hz (10 MuJoCo substeps of 2 ms). The
scene, the task definitions (reward from contact pairs, ``reward == 4`` is success), the action mapping and the
initial-state sampler all come from gym-aloha; this adapter only drives them differently:

- It steps gym-aloha's dm_control ``Physics`` and ``Task`` itself (``before_step`` -> ``physics.step`` ->
  ``get_reward``) instead of going through ``gym_aloha.env.AlohaEnv``, whose every step renders three 640x480
  images (``top``, ``angle``, ``front_close``) that nobody reads: ~10x the cost of the physics on a CPU renderer.
  ``AlohaEnv`` also renders only ``top``; the wrist cameras ``left_wrist`` / ``right_wrist`` exist in the assets and
  are rendered here by name.
- The initial object pose is ``gym_aloha.utils.sample_box_pose(seed)`` / ``sample_insertion_pose(seed)`` (a fresh
  ``RandomState(seed)``), exactly what ``AlohaEnv.reset(seed=seed)`` places, set without gym-aloha's module-global
  ``BOX_POSE``. So a ``(task, seed)`` pair fixes the initial state in a fresh and in a reused env alike.

Action (14-d, physical units, the joint-position variant): ``[left 6 joint angles (rad), left gripper (0 closed ..
1 open), right 6 joint angles, right gripper]``. State: the same layout, measured. Rendering uses one
``mujoco.Renderer`` per env with the CPU-friendly visual settings of the Meta-World adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import openlbm.envs  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from openlbm.envs import check_env_fields
from openlbm.envs.tasks import ALOHA_TASKS, instructions
from openlbm.types import EmbodimentSpec, EnvFrame

CAMERAS: tuple[str, ...] = ("top", "left_wrist", "right_wrist", "angle", "front_close", "left_pillar", "right_pillar")
"""Cameras defined in gym-aloha's scenes (``top`` is the one gym-aloha itself renders)."""

MAX_EPISODE_STEPS = 1000
"""Upper bound on ``max_steps`` (20 s at 50 Hz); the scripted experts finish within 400 steps."""

EMBODIMENT_NAME = "aloha_bimanual"

JOINT_NAMES: tuple[str, ...] = tuple(
    f"{side}_{j}" for side in ("left", "right")
    for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
)
"""Names of the 14 state and action dims (gym-aloha's ``JOINTS`` order)."""

PRIVILEGED_DIM = 14 + 2 * 7
"""Length of ``EnvFrame.privileged``: state, then up to two object poses (zeros where a task has one object)."""

_XML = {"transfer-cube": "bimanual_viperx_transfer_cube.xml", "insertion": "bimanual_viperx_insertion.xml"}
_EE_XML = {
    "transfer-cube": "bimanual_viperx_end_effector_transfer_cube.xml",
    "insertion": "bimanual_viperx_end_effector_insertion.xml",
}
_OBJECT_JOINTS = {"transfer-cube": ("red_box_joint",), "insertion": ("red_peg_joint", "blue_socket_joint")}


@dataclass(frozen=True)
class AlohaConfig:
    """How ALOHA environments are built: cameras, image size, episode length."""

    cameras: tuple[str, ...] = ("top", "left_wrist", "right_wrist")
    """Cameras rendered every step, in order (the first one is used for videos). Empty = no rendering."""
    image_size: tuple[int, int] = (128, 128)
    """``(height, width)`` of every rendered image, in pixels (8..1024). Any aspect shows the horizontal field of
    view of gym-aloha's 640x480 renders (:func:`fovy_for`); ``(64, 128)`` frames the table band with both arms and
    no empty rows, a square image adds empty rows above and below."""
    max_steps: int = 400
    """Time limit per episode in control steps (8 s at 50 Hz; the scripted experts' waypoints end at step 400)."""
    terminate_on_success: bool = False
    """If True, ``step`` returns ``terminated=True`` once the task succeeds (the rollout runner stops at success
    on its own either way)."""
    fast_render: bool = True
    """Disable MSAA, shadows and reflections (much faster on a CPU renderer; slightly flatter images)."""
    fps: float = 50.0
    """Control frequency written into datasets (gym-aloha's ``DT`` = 20 ms)."""

    def __post_init__(self) -> None:
        check_env_fields("ALOHA", self.cameras, CAMERAS, self.image_size, self.max_steps, MAX_EPISODE_STEPS)

    def build(self, task: str, seed: int = 0) -> AlohaEnv:
        """An environment for ``task`` whose first ``reset()`` (without a seed) uses ``seed``."""
        return AlohaEnv(self, task, seed)

    def embodiment(self) -> EmbodimentSpec:
        return embodiment(self)


def embodiment(cfg: AlohaConfig | None = None) -> EmbodimentSpec:
    """The bimanual ALOHA as seen by a policy: the config's cameras, 14-d joint state, 14-d joint-position action."""
    cfg = cfg or AlohaConfig()
    return EmbodimentSpec(
        name=EMBODIMENT_NAME,
        cameras=tuple(cfg.cameras),
        image_size=tuple(cfg.image_size),  # type: ignore[arg-type]
        state_dim=14,
        action_dim=14,
        fps=cfg.fps,
    )


def _check_task(task: str) -> None:
    if task not in ALOHA_TASKS:
        raise ValueError(f"unknown ALOHA task {task!r}; valid tasks: {', '.join(ALOHA_TASKS)}")


def initial_object_pose(task: str, seed: int) -> np.ndarray:
    """Object pose(s) ``[x, y, z, qw, qx, qy, qz]`` (7 per object) that gym-aloha's ``reset(seed=seed)`` places."""
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    _check_task(task)
    if task == "transfer-cube":
        return np.asarray(sample_box_pose(seed), dtype=np.float64)
    return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)


WELD_SOLIMP = (0.9, 0.95, 0.001)
"""Impedance of the gripper-to-mocap welds in the end-effector scene (see :func:`load_physics`)."""


def load_physics(task: str, end_effector: bool = False) -> tuple[Any, Any]:
    """gym-aloha's dm_control ``(Physics, Task)`` for ``task``: joint-position or end-effector (mocap) variant."""
    from dm_control import mujoco as dm_mujoco
    from gym_aloha.constants import ASSETS_DIR
    from gym_aloha.tasks import sim, sim_end_effector

    _check_task(task)
    xml = (_EE_XML if end_effector else _XML)[task]
    physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml))
    if end_effector:
        # The arms of the mocap scene have no actuators: only the welds hold them against gravity and the joints'
        # friction. With the XML's soft welds (solimp 0.25) MuJoCo 3.3 leaves the grippers several cm above their
        # targets and no grasp closes (measured: 0 of 4 transfers); with stiff welds the plans succeed (rates in
        # docs/simulation.md). Only the planning scene changes; the joint-position task stays gym-aloha's.
        physics.model.eq_solimp[:2, :3] = WELD_SOLIMP
        kind = {"transfer-cube": sim_end_effector.TransferCubeEndEffectorTask,
                "insertion": sim_end_effector.InsertionEndEffectorTask}[task]
    else:
        kind = {"transfer-cube": sim.TransferCubeTask, "insertion": sim.InsertionTask}[task]
    return physics, kind()


def place_objects(physics: Any, task: str, pose: np.ndarray) -> None:
    """Write the object pose(s) from :func:`initial_object_pose` into ``physics`` (inside a reset context)."""
    for i, joint in enumerate(_OBJECT_JOINTS[task]):
        physics.named.data.qpos[joint] = pose[7 * i : 7 * i + 7]


def substeps(physics: Any) -> int:
    """MuJoCo steps per 20 ms control step (gym-aloha's ``DT``)."""
    from gym_aloha.constants import DT

    n = round(DT / physics.timestep())
    if n < 1 or abs(n * physics.timestep() - DT) > 1e-9:
        raise RuntimeError(f"physics timestep {physics.timestep()} does not divide the control step {DT}")
    return n


NATIVE_ASPECT = 4 / 3
"""Width / height of gym-aloha's own renders (640x480), for which the scene's camera ``fovy`` values were chosen."""


def fovy_for(fovy: float, image_size: tuple[int, int]) -> float:
    """Vertical field of view (degrees) that gives an ``image_size`` render the horizontal field of view a 4:3
    render has at ``fovy``.

    MuJoCo fixes a camera's *vertical* field of view and derives the horizontal one from the image's aspect, so a
    square render of the ``top`` camera loses the sides of the 4:3 view, where the arms enter the scene (and its top
    and bottom rows are table-less background). Keeping the horizontal extent instead makes the image's width always
    span the same scene, whatever its height.
    """
    h, w = image_size
    half = np.tan(np.deg2rad(fovy) / 2) * NATIVE_ASPECT * h / w
    return float(np.rad2deg(2 * np.arctan(half)))


def _apply_fast_render(model: Any) -> None:
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0


class AlohaEnv(gym.Env):
    """One ALOHA task (joint-position control); observations are :class:`EnvFrame`, ``info["success"]`` a bool.

    ``reset(seed=s, options={"instruction": text})`` fixes the initial object pose by ``s`` and the instruction
    carried in the frames (default: the task's canonical instruction); ``reset()`` without a seed uses the
    constructor's seed first, then the previous seed + 1. ``EnvFrame.privileged`` (for the scripted expert) is
    ``[14-d state, object poses (7 per object)]`` zero-padded to :data:`PRIVILEGED_DIM` for every task, so frames of
    both tasks stack into one batch.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, cfg: AlohaConfig, task: str, seed: int = 0) -> None:
        from gym_aloha.constants import START_ARM_POSE

        _check_task(task)
        self.cfg = cfg
        self.task = task
        self.instruction = instructions(task, "train")[0]
        self._next_seed = int(seed)
        self._steps = 0
        self._ready = False
        self._start_pose = np.asarray(START_ARM_POSE, dtype=np.float64)
        self._physics, self._task = load_physics(task)
        self._n_sub = substeps(self._physics)
        lo, hi = self._physics.model.actuator_ctrlrange[[0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]].T
        low = np.concatenate([lo[:6], [0.0], lo[6:], [0.0]]).astype(np.float32)
        high = np.concatenate([hi[:6], [1.0], hi[6:], [1.0]]).astype(np.float32)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(14,), dtype=np.float32)
        self._renderer: Any = None
        if cfg.cameras:
            self._init_renderer()

    # -- rendering -------------------------------------------------------------------------------------------------
    def _init_renderer(self) -> None:
        import mujoco

        from openlbm.envs.metaworld import GL_HELP

        model = self._physics.model.ptr
        if self.cfg.fast_render:
            _apply_fast_render(model)
        h, w = self.cfg.image_size
        for cam in self.cfg.cameras:
            cam_id = self._physics.model.name2id(cam, "camera")
            model.cam_fovy[cam_id] = fovy_for(float(model.cam_fovy[cam_id]), (h, w))
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), w)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), h)
        try:
            self._renderer = mujoco.Renderer(model, height=h, width=w)
        except Exception as e:  # mujoco raises a bare Exception/RuntimeError from the GL layer
            raise RuntimeError(f"{GL_HELP}\n(underlying error: {type(e).__name__}: {e})") from e

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Render every configured camera now: ``{camera: uint8 [H, W, 3]}``."""
        images: dict[str, np.ndarray] = {}
        if self._renderer is None:
            return images
        for cam in self.cfg.cameras:
            self._renderer.update_scene(self._physics.data.ptr, camera=cam)
            images[cam] = self._renderer.render().copy()
        return images

    def render(self) -> np.ndarray | None:  # gymnasium API: the first camera
        imgs = self.render_cameras()
        return imgs[self.cfg.cameras[0]] if imgs else None

    # -- gym API ---------------------------------------------------------------------------------------------------
    def _frame(self, render: bool = True) -> EnvFrame:
        state = self._task.get_qpos(self._physics)  # [14]: joints + normalized gripper openings
        privileged = np.zeros(PRIVILEGED_DIM)
        objects = self._physics.data.qpos[16:]  # [7 per object]: free-joint poses
        privileged[:14], privileged[14 : 14 + len(objects)] = state, objects
        return EnvFrame(
            images=self.render_cameras() if render else {},
            state=np.asarray(state, dtype=np.float32),
            instruction=self.instruction,
            task=self.task,
            privileged=privileged,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[EnvFrame, dict]:
        seed = self._next_seed if seed is None else int(seed)
        self._next_seed = seed + 1  # an unseeded reset continues with the next seed
        if options and options.get("instruction"):
            self.instruction = str(options["instruction"])
        pose = initial_object_pose(self.task, seed)
        physics = self._physics
        with physics.reset_context():  # mj_resetData, then mj_forward on exit
            physics.named.data.qpos[:16] = self._start_pose
            np.copyto(physics.data.ctrl, self._start_pose)
            place_objects(physics, self.task, pose)
        self._steps = 0
        self._ready = True
        return self._frame(), {"success": False, "task": self.task, "seed": seed}

    def step(self, action: np.ndarray, *, render: bool = True) -> tuple[EnvFrame, float, bool, bool, dict[str, Any]]:
        """Gymnasium's step; ``render=False`` skips the cameras (the frame's ``images`` are empty)."""
        if not self._ready:
            raise RuntimeError(f"{self.task}: call reset() before step()")
        if self._steps >= self.cfg.max_steps:
            raise RuntimeError(f"{self.task}: episode hit max_steps={self.cfg.max_steps}; call reset()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (14,):
            raise ValueError(f"{self.task}: action must have shape (14,) = 2 x (6 joints + gripper), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{self.task}: action contains NaN or inf: {a.tolist()}")
        # MuJoCo clamps every position target to its actuator's ctrlrange, so no clipping here.
        self._task.before_step(a, self._physics)
        self._physics.step(self._n_sub)
        self._task.after_step(self._physics)
        reward = float(self._task.get_reward(self._physics))
        self._steps += 1
        success = reward >= self._task.max_reward
        terminated = success and self.cfg.terminate_on_success
        truncated = self._steps >= self.cfg.max_steps
        return self._frame(render), reward, terminated, truncated, {"success": success, "steps": self._steps}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
