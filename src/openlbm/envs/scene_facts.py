"""Captions for Meta-World frames, built from facts read off the simulator state (not from pixels, not made up).

Each fact is a threshold on a quantity of Meta-World's full observation vector (``EnvFrame.privileged``, 39-d:
hand position ``[0:3]``, gripper opening ``[3]`` (finger distance / 0.1 m, clipped to 0..1), main object position
``[4:7]``, the previous step's hand position ``[18:21]``, goal position ``[36:39]``; metres, world frame, +z up,
+y away from the robot's base), plus the task's success flag from the simulator. Thresholds were set from scripted
episodes (docs/non-robot-data.md lists them all):

- every task: gripper open / partly closed / closed; gripper height (low near the table / mid / high); arm motion
  (still, moving up, down, away from or toward the robot, sideways); gripper at / above / far from the task's
  object; whether the task has been completed (Meta-World's success flag, latched: once true it stays true, as an
  evaluation episode ends at its first success).
- the ``quickstart`` tasks add their object's state: the drawer is closed / partly open / open (drawer-open,
  drawer-close); the red button is up / partly pressed / pressed down (button-press-topdown); the handle is up /
  partly pressed / pressed down (handle-press); the plate is far from / near / in the goal (plate-slide).

The observation of the reset frame (step 0) can hold stale object positions (Meta-World computes it before the
simulator moves the objects into place), so captions are made for steps >= 1 only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

OBJECT_NOUNS: dict[str, str] = {
    "button-press-topdown-v3": "the red button",
    "drawer-close-v3": "the drawer handle",
    "drawer-open-v3": "the drawer handle",
    "plate-slide-v3": "the plate",
    "handle-press-v3": "the handle",
}
"""What ``obs[4:7]`` is, per task (checked against Meta-World's ``_get_pos_objects`` and scene XML; the button's
material is ``btn_red``); other tasks say "the object"."""

DRAWER_TRAVEL_M = 0.2
"""drawer-open's goal is the handle pulled out this far from its closed position (Meta-World's ``maxDist``)."""


@dataclass(frozen=True)
class FrameFacts:
    """The facts of one frame: caption sentences and the measured quantities behind them."""

    sentences: tuple[str, ...]
    """Fact sentences, without the instruction (e.g. ``"the drawer is open"``)."""
    values: dict[str, float] = field(default_factory=dict)
    """The quantities the sentences threshold (``gripper_opening``, ``hand_z_m``, ``drawer_opening_m``, ...)."""
    task_complete: bool = False
    """Whether the task had been completed at this frame."""

    def caption(self, instruction: str) -> str:
        """``"<instruction>. <fact>. <fact>. ..."`` (lower case, one sentence per fact)."""
        return ". ".join([instruction.strip().rstrip("."), *self.sentences]) + "."


def _three_way(x: float, low: float, high: float, words: tuple[str, str, str]) -> str:
    """``words[0]`` if ``x <= low``, ``words[2]`` if ``x >= high``, else ``words[1]``."""
    return words[0] if x <= low else words[2] if x >= high else words[1]


def gripper_facts(obs: np.ndarray, noun: str) -> tuple[list[str], dict[str, float]]:
    """The facts every task has: gripper opening, height, motion, and where it is relative to ``noun``."""
    hand, prev, obj = obs[0:3], obs[18:21], obs[4:7]
    opening, z = float(obs[3]), float(hand[2])
    out = [
        _three_way(opening, 0.35, 0.8, ("the gripper is closed", "the gripper is partly closed", "the gripper is open")),
        _three_way(z, 0.10, 0.25, ("the gripper is low, close to the table", "the gripper is at mid height",
                                   "the gripper is raised high above the table")),
    ]
    v = hand - prev  # metres moved during the last control step (<= 0.01 per axis at full action)
    speed = float(np.linalg.norm(v))
    if speed < 0.002:
        out.append("the arm is still")
    elif abs(v[2]) >= max(abs(v[0]), abs(v[1])):
        out.append("the gripper is moving up" if v[2] > 0 else "the gripper is moving down")
    elif abs(v[1]) >= abs(v[0]):
        out.append("the gripper is moving away from the robot" if v[1] > 0 else "the gripper is moving toward the robot")
    else:
        out.append("the gripper is moving sideways")
    dist = float(np.linalg.norm(hand - obj))
    flat = float(np.linalg.norm(hand[:2] - obj[:2]))
    if dist < 0.05:
        out.append(f"the gripper is at {noun}")
    elif flat < 0.04 and hand[2] > obj[2]:
        out.append(f"the gripper is above {noun}")
    elif dist > 0.25:
        out.append(f"the gripper is far from {noun}")
    values = {"gripper_opening": opening, "hand_z_m": z, "hand_speed_m": speed, "hand_to_object_m": dist,
              "hand_to_object_xy_m": flat}
    return out, values


def _drawer(closed_offset: float) -> Callable[[np.ndarray], tuple[str, dict[str, float]]]:
    """Drawer state from the handle's distance (along y) from its closed position ``goal_y + closed_offset``."""

    def fact(obs: np.ndarray) -> tuple[str, dict[str, float]]:
        opening = float(obs[37] + closed_offset - obs[5])
        return (_three_way(opening, 0.03, 0.12, ("the drawer is closed", "the drawer is partly open",
                                                 "the drawer is open")), {"drawer_opening_m": opening})

    return fact


def _pressed(noun: str, done: float) -> Callable[[np.ndarray], tuple[str, dict[str, float]]]:
    """A button / handle pushed down: its height above the pressed (goal) position; ``done`` = Meta-World's
    success distance for the task."""

    def fact(obs: np.ndarray) -> tuple[str, dict[str, float]]:
        above = float(obs[6] - obs[38])
        return (_three_way(above, done, 0.08, (f"{noun} is pressed down", f"{noun} is partly pressed",
                                               f"{noun} is up, not pressed")), {"height_above_pressed_m": above})

    return fact


def _plate(obs: np.ndarray) -> tuple[str, dict[str, float]]:
    d = float(np.linalg.norm(obs[4:7] - obs[36:39]))
    return (_three_way(d, 0.07, 0.15, ("the plate is in the goal", "the plate is near the goal",
                                       "the plate is far from the goal")), {"plate_to_goal_m": d})


TASK_FACTS: dict[str, Callable[[np.ndarray], tuple[str, dict[str, float]]]] = {
    "drawer-open-v3": _drawer(DRAWER_TRAVEL_M),
    "drawer-close-v3": _drawer(0.0),
    "button-press-topdown-v3": _pressed("the red button", 0.024),
    "handle-press-v3": _pressed("the handle", 0.02),
    "plate-slide-v3": _plate,
}
"""The object-state fact of each task that has one (thresholds: Meta-World's success distances where they exist)."""


def frame_facts(task: str, obs: np.ndarray, task_complete: bool) -> FrameFacts:
    """All facts of one frame of ``task`` from its full Meta-World observation ``obs`` (39-d)."""
    obs = np.asarray(obs, dtype=np.float64)
    if obs.shape != (39,):
        raise ValueError(f"{task}: expected Meta-World's 39-d observation, got shape {obs.shape}")
    sentences: list[str] = []
    values: dict[str, float] = {}
    if task in TASK_FACTS:
        sentence, vals = TASK_FACTS[task](obs)
        sentences.append(sentence)
        values.update(vals)
    generic, vals = gripper_facts(obs, OBJECT_NOUNS.get(task, "the object"))
    sentences += generic
    values.update(vals)
    sentences.append("the task is complete" if task_complete else "the task is not complete yet")
    return FrameFacts(tuple(sentences), values, task_complete)
