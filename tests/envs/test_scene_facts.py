"""Caption facts against the simulator's own joint positions: the facts are read from the observation vector, the
ground truth here from MuJoCo's ``qpos`` (drawer slide, button / handle joint, gripper finger), so a wrong index or
threshold shows up as a disagreement, and each fact must flip during a scripted episode when the joint does."""

from __future__ import annotations

import numpy as np
import pytest

from openlbm.envs.expert import ScriptedExpert
from openlbm.envs.metaworld import MetaWorldConfig
from openlbm.envs.scene_facts import FrameFacts, frame_facts

OBJECT_JOINT = 9
"""qpos index of the task object's joint in these scenes (after 7 arm joints and 2 finger joints)."""
RIGHT_FINGER = 7
"""qpos index of ``r_close``: ~0 when open, ~0.04 when closed on nothing."""


def _episode(task: str, seed: int = 5, steps: int = 130) -> list[tuple[FrameFacts, float, float]]:
    """``(facts, object joint qpos, finger qpos)`` for steps 1..steps of a scripted episode (no rendering)."""
    cfg = MetaWorldConfig(cameras=(), max_steps=steps)
    expert = ScriptedExpert(cfg)
    env = cfg.build(task, seed)
    out = []
    try:
        frame, _ = env.reset(seed=seed)
        done = False
        for _ in range(steps):
            frame, _, _, _, info = env.step(expert.act_numpy(frame.privileged, task))
            done = done or info["success"]
            qpos = env._env.data.qpos
            out.append((frame_facts(task, frame.privileged, done), float(qpos[OBJECT_JOINT]), float(qpos[RIGHT_FINGER])))
    finally:
        env.close()
    return out


def _first(sentences: list[str], text: str) -> int:
    return next(i for i, s in enumerate(sentences) if text in s)


@pytest.mark.parametrize("task, start, end", [("drawer-open-v3", "closed", "open"), ("drawer-close-v3", "open", "closed")])
def test_drawer_facts_follow_the_drawer_joint(task: str, start: str, end: str) -> None:
    ep = _episode(task)
    for facts, slide, _ in ep:
        opening = -slide  # the slide joint goes negative as the drawer comes out
        assert abs(facts.values["drawer_opening_m"] - opening) < 0.015, (facts.values, opening)
        if opening <= 0.015:
            assert "the drawer is closed" in facts.sentences
        if opening >= 0.135:
            assert "the drawer is open" in facts.sentences
    states = [f.sentences[0] for f, _, _ in ep]
    assert states[0] == f"the drawer is {start}" and states[-1] == f"the drawer is {end}"
    assert ep[0][0].task_complete is False and ep[-1][0].task_complete is True
    assert "the task is complete" in ep[-1][0].sentences and "the task is not complete yet" in ep[0][0].sentences


@pytest.mark.parametrize("task, noun, pressed_at", [("button-press-topdown-v3", "the red button", 0.075),
                                                    ("handle-press-v3", "the handle", 0.085)])
def test_press_facts_follow_the_pressed_joint(task: str, noun: str, pressed_at: float) -> None:
    ep = _episode(task)
    for facts, joint, _ in ep:
        depth = -joint
        if depth <= 0.005:
            assert f"{noun} is up, not pressed" in facts.sentences, (facts.sentences, depth)
        if depth >= pressed_at:
            assert f"{noun} is pressed down" in facts.sentences, (facts.sentences, depth)
    states = [f.sentences[0] for f, _, _ in ep]
    assert states[0] == f"{noun} is up, not pressed" and states[-1] == f"{noun} is pressed down"
    if task == "button-press-topdown-v3":  # the expert hovers over the button, then presses it
        sentences = [" / ".join(f.sentences) for f, _, _ in ep]
        assert _first(sentences, f"the gripper is above {noun}") < _first(sentences, f"{noun} is pressed down")


def test_gripper_facts_follow_the_finger_joint() -> None:
    ep = _episode("button-press-topdown-v3", steps=40)  # the expert closes the gripper before pressing
    seen = set()
    for facts, _, finger in ep:
        if finger <= 0.005:
            assert "the gripper is open" in facts.sentences
            seen.add("open")
        if finger >= 0.035:
            assert "the gripper is closed" in facts.sentences
            seen.add("closed")
    assert seen == {"open", "closed"}, "the gripper should be seen open, then closed"


def test_plate_goes_from_far_to_in_the_goal() -> None:
    states = [f.sentences[0] for f, _, _ in _episode("plate-slide-v3", steps=100)]
    assert states[0] == "the plate is far from the goal" and states[-1] == "the plate is in the goal"


def test_motion_height_and_generic_object_facts() -> None:
    obs = np.zeros(39)
    obs[0:4] = [0.0, 0.6, 0.30, 1.0]  # hand high, gripper open
    obs[18:21] = [0.0, 0.6, 0.305]  # it was 5 mm higher a step ago
    obs[4:7] = [0.0, 0.6, 0.02]  # an object right below
    facts = frame_facts("reach-v3", obs, task_complete=False)
    assert facts.sentences == ("the gripper is open", "the gripper is raised high above the table",
                               "the gripper is moving down", "the gripper is above the object",
                               "the task is not complete yet")
    obs[18:21] = [0.0, 0.595, 0.30]  # it moved 5 mm in +y, away from the base
    assert "the gripper is moving away from the robot" in frame_facts("reach-v3", obs, True).sentences
    obs[18:21] = obs[0:3]
    assert "the arm is still" in frame_facts("reach-v3", obs, True).sentences
    assert frame_facts("reach-v3", obs, True).caption("reach the goal.").startswith("reach the goal. the gripper")
    with pytest.raises(ValueError, match="39-d"):
        frame_facts("reach-v3", obs[:4], True)
