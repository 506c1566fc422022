"""Scripted ALOHA experts: end-effector waypoints, executed in the mocap variant, replayed as joint commands.

This is how the ACT paper made its simulated demonstrations. At an episode's first step the expert reads the object
pose(s) from ``obs.privileged``, builds a waypoint schedule for both grippers (position, orientation, opening at
fixed control steps; linear interpolation in between), and executes it in gym-aloha's *end-effector* scene (the
grippers are welded to mocap bodies that follow the waypoints) started from the same object pose. The joint angles
that scene goes through, with each gripper's commanded opening in place of its measured one, become the joint-position
commands replayed, one per step, in the joint-position environment, after the first :data:`RAMP_STEPS` are eased
from the start pose (:func:`ease_in`: the planning scene snaps its arms onto its first targets). The replay does not always reproduce the
mocap run (joint servos lag and contacts differ slightly), which is why the success rate is measured through the
rollout runner in the joint environment, never assumed.

Planning costs one physics-only episode (~400 x 10 MuJoCo steps) per episode, in the process running the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from openlbm.envs.aloha import AlohaConfig, embodiment, load_physics, place_objects, substeps
from openlbm.envs.tasks import ALOHA_TASKS
from openlbm.types import EmbodimentSpec, Observation

PLAN_STEPS = 400
"""Length of every scripted schedule in control steps (the last waypoint); the replay holds the final command."""

RAMP_STEPS = 20
"""Control steps (0.4 s) over which the replayed joint commands ease from the start pose onto the plan (see
:func:`ease_in`)."""

ARM_JOINTS = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12])
"""The 12 arm-joint dims of the 14-d action (6 and 13 are the grippers)."""


@dataclass(frozen=True)
class Waypoint:
    """Gripper target at control step ``t``: position (m), orientation quaternion (w, x, y, z), opening (0..1)."""

    t: int
    xyz: np.ndarray
    quat: np.ndarray
    gripper: float


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions in (w, x, y, z) order."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ])


def _axis_angle(axis: Sequence[float], degrees: float) -> np.ndarray:
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, dtype=np.float64)])


def _wp(t: int, xyz: np.ndarray, quat: np.ndarray, gripper: float) -> Waypoint:
    return Waypoint(t, np.asarray(xyz, dtype=np.float64), np.asarray(quat, dtype=np.float64), gripper)


def waypoints(task: str, objects: np.ndarray, left0: np.ndarray, right0: np.ndarray) -> tuple[list[Waypoint], ...]:
    """Left and right gripper schedules for ``task`` given object poses and the initial mocap poses (xyz + quat).

    The timings and offsets are the ones the ACT authors published for these scenes (picking from above with the
    gripper pitched 60 degrees, meeting mid-air above the table centre).
    """
    down_right = _quat_mul(right0[3:], _axis_angle([0, 1, 0], -60))
    if task == "transfer-cube":
        box = objects[:3]
        meet = np.array([0.0, 0.5, 0.25])
        left_meet_quat = _axis_angle([1, 0, 0], 90)
        left = [
            _wp(0, left0[:3], left0[3:], 0), _wp(100, meet + [-0.1, 0, -0.02], left_meet_quat, 1),
            _wp(260, meet + [0.02, 0, -0.02], left_meet_quat, 1), _wp(310, meet + [0.02, 0, -0.02], left_meet_quat, 0),
            _wp(360, meet + [-0.1, 0, -0.02], [1, 0, 0, 0], 0), _wp(400, meet + [-0.1, 0, -0.02], [1, 0, 0, 0], 0),
        ]
        right = [
            _wp(0, right0[:3], right0[3:], 0), _wp(90, box + [0, 0, 0.08], down_right, 1),
            _wp(130, box + [0, 0, -0.015], down_right, 1), _wp(170, box + [0, 0, -0.015], down_right, 0),
            _wp(200, meet + [0.05, 0, 0], down_right, 0), _wp(220, meet, down_right, 0), _wp(310, meet, down_right, 1),
            _wp(360, meet + [0.1, 0, 0], down_right, 1), _wp(400, meet + [0.1, 0, 0], down_right, 1),
        ]
        return left, right
    if task == "insertion":
        peg, socket = objects[:3], objects[7:10]
        down_left = _quat_mul(right0[3:], _axis_angle([0, 1, 0], 60))
        meet = np.array([0.0, 0.5, 0.15])
        lift = np.array([0, 0, 0.00715])  # the peg sits in the right gripper slightly low: raise it to the socket axis
        left = [
            _wp(0, left0[:3], left0[3:], 0), _wp(120, socket + [0, 0, 0.08], down_left, 1),
            _wp(170, socket + [0, 0, -0.03], down_left, 1), _wp(220, socket + [0, 0, -0.03], down_left, 0),
            _wp(285, meet + [-0.1, 0, 0], down_left, 0), _wp(340, meet + [-0.05, 0, 0], down_left, 0),
            _wp(400, meet + [-0.05, 0, 0], down_left, 0),
        ]
        right = [
            _wp(0, right0[:3], right0[3:], 0), _wp(120, peg + [0, 0, 0.08], down_right, 1),
            _wp(170, peg + [0, 0, -0.03], down_right, 1), _wp(220, peg + [0, 0, -0.03], down_right, 0),
            _wp(285, meet + [0.1, 0, 0] + lift, down_right, 0), _wp(340, meet + [0.05, 0, 0] + lift, down_right, 0),
            _wp(400, meet + [0.05, 0, 0] + lift, down_right, 0),
        ]
        return left, right
    raise ValueError(f"no scripted expert for task {task!r}; valid tasks: {', '.join(ALOHA_TASKS)}")


def interpolate(schedule: list[Waypoint], t: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pose and opening at step ``t``: linear between the surrounding waypoints, held after the last one."""
    if t >= schedule[-1].t:
        last = schedule[-1]
        return last.xyz, last.quat, last.gripper
    nxt = next(i for i, w in enumerate(schedule) if w.t > t)
    a, b = schedule[nxt - 1], schedule[nxt]
    frac = (t - a.t) / (b.t - a.t)
    # Linear blend of quaternions (not slerp), as in the published scripts: the mocap weld normalizes it.
    return a.xyz + (b.xyz - a.xyz) * frac, a.quat + (b.quat - a.quat) * frac, a.gripper + (b.gripper - a.gripper) * frac


def ease_in(commands: np.ndarray, steps: int = RAMP_STEPS) -> np.ndarray:
    """Joint commands ``[T, 14]`` whose arm joints cross-fade from holding ``commands[0]`` (the start pose) to
    following ``commands`` over the first ``steps`` (a cosine ease: zero velocity at the start, on the plan at its
    velocity at ``steps``); grippers unchanged.

    Why: gym-aloha's end-effector scene starts its mocap targets at fixed poses, not at the grippers' poses in the
    start arm pose, and the stiffened welds snap the arms onto them within two control steps (shoulder commands
    -0.96 -> -1.44 -> -1.70 rad at steps 0..2). Replayed as joint-position targets, such a jump makes the servos
    overshoot (the measured shoulder reached -2.13 rad). Over the first ``steps`` the arms are in free space, far from
    any object, so a smooth path to the plan's pose at ``steps`` changes nothing the task depends on.
    """
    out = commands.copy()
    ease = (1 - np.cos(np.pi * np.arange(steps + 1) / steps)) / 2  # [steps + 1]: 0 -> 1, zero slope at 0 and 1
    start, plan = commands[0, ARM_JOINTS], commands[: steps + 1, ARM_JOINTS]  # [12], [steps + 1, 12]
    # a cross-fade from holding the start pose to the plan: at ``steps`` it is on the plan, at the plan's velocity
    out[: steps + 1, ARM_JOINTS] = start + ease[:, None] * (plan - start)
    return out


class _MocapSim:
    """gym-aloha's end-effector scene for one task, reused across plans."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.physics, self.task_def = load_physics(task, end_effector=True)
        self.n_sub = substeps(self.physics)

    def joint_commands(self, objects: np.ndarray, noise: np.random.Generator | None, noise_std: float) -> np.ndarray:
        """Execute the schedule from ``objects``; float32 ``[PLAN_STEPS + 1, 14]`` joint-position commands."""
        physics = self.physics
        with physics.reset_context():
            self.task_def.initialize_robots(physics)  # start arm pose, mocap on the grippers, grippers closed
            place_objects(physics, self.task, objects)
        left0 = np.concatenate([physics.data.mocap_pos[0], physics.data.mocap_quat[0]])
        right0 = np.concatenate([physics.data.mocap_pos[1], physics.data.mocap_quat[1]])
        left, right = waypoints(self.task, objects, left0, right0)
        commands = np.zeros((PLAN_STEPS + 1, 14), dtype=np.float32)
        commands[0] = self.task_def.get_qpos(physics)
        commands[0, [6, 13]] = 0.0  # grippers are commanded closed at the start of the mocap episode
        for t in range(PLAN_STEPS):
            (lx, lq, lg), (rx, rq, rg) = interpolate(left, t), interpolate(right, t)
            if noise is not None and noise_std > 0:
                lx, rx = lx + noise.normal(0, noise_std, 3), rx + noise.normal(0, noise_std, 3)
            self.task_def.before_step(np.concatenate([lx, lq, [lg], rx, rq, [rg]]), physics)
            physics.step(self.n_sub)
            commands[t + 1] = self.task_def.get_qpos(physics)
            commands[t + 1, [6, 13]] = lg, rg  # the commanded opening, not the measured one
        return ease_in(commands)


class AlohaExpert:
    """PolicyLike scripted ALOHA expert. Reads ``obs.task`` and ``obs.privileged``; ignores images.

    Each batch slot plans at its first step after ``reset`` and then replays its joint commands. ``action_noise``
    is the std (metres) of Gaussian noise on the gripper position targets while planning (the joint commands that
    result are what the env receives and what datasets record); ``reseed(slot, seed)`` makes it reproducible.
    """

    def __init__(self, env_cfg: AlohaConfig | None = None, action_noise: float = 0.0, seed: int = 0) -> None:
        if action_noise < 0 or not np.isfinite(action_noise):
            raise ValueError(f"action_noise must be a finite std >= 0, got {action_noise}")
        self.embodiment: EmbodimentSpec = embodiment(env_cfg)
        self.action_noise = float(action_noise)
        self._seed = int(seed)
        self._sims: dict[str, _MocapSim] = {}
        self._plans: dict[int, np.ndarray] = {}
        self._steps: dict[int, int] = {}
        self._rngs: dict[int, np.random.Generator] = {}

    def reseed(self, slot: int, seed: int) -> None:
        """Make slot ``slot``'s noise stream a pure function of ``seed`` (e.g. the episode seed)."""
        self._rngs[slot] = np.random.default_rng([self._seed, int(seed)])

    def reset(self, indices: Sequence[int] | None = None) -> None:
        for i in list(self._plans) if indices is None else indices:
            self._plans.pop(int(i), None)
            self._steps.pop(int(i), None)

    def plan(self, task: str, privileged: np.ndarray, slot: int = 0) -> np.ndarray:
        """Joint commands ``[PLAN_STEPS + 1, 14]`` for an episode whose first frame has ``privileged``."""
        if task not in ALOHA_TASKS:
            raise ValueError(f"no scripted expert for task {task!r}; valid tasks: {', '.join(ALOHA_TASKS)}")
        if task not in self._sims:
            self._sims[task] = _MocapSim(task)
        rng = self._rngs.setdefault(slot, np.random.default_rng([self._seed, slot])) if self.action_noise else None
        return self._sims[task].joint_commands(np.asarray(privileged[14:], dtype=np.float64), rng, self.action_noise)

    def select_action(self, obs: Observation) -> Tensor:
        if obs.privileged is None or obs.task is None:
            raise ValueError(
                "AlohaExpert needs obs.privileged (state + object poses) and obs.task; build observations from "
                "AlohaEnv frames"
            )
        priv = obs.privileged.detach().cpu().numpy().astype(np.float64)  # [B, 28]
        actions = np.zeros((obs.batch_size, 14), dtype=np.float32)
        for i in range(obs.batch_size):
            if i not in self._plans:
                self._plans[i], self._steps[i] = self.plan(obs.task[i], priv[i], slot=i), 0
            plan = self._plans[i]
            actions[i] = plan[min(self._steps[i], len(plan) - 1)]
            self._steps[i] += 1
        return torch.from_numpy(actions)  # [B, 14]
