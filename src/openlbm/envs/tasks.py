"""Task names of every simulation suite (Meta-World v3, bimanual ALOHA), named task sets and instructions.

Policies are conditioned on language, never on task ids, so every task has several paraphrases. The first
``len - 2`` phrases of each task are the *train* split (used to label demonstrations); the last two are *heldout*
(used only at evaluation, to test that a policy follows language it never saw verbatim).

The task-set splits (MT10, ML45 train/test) are read from the installed ``metaworld`` package at import time, so
they always match Meta-World's own benchmark definitions. Task names are unique across suites (Meta-World's end in
``-v3``), so a task name alone says which suite runs it (:func:`suite_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from openlbm.envs.difficulty import METAWORLD_DIFFICULTY

_HELDOUT = 2
"""How many trailing paraphrases of each task are reserved for evaluation."""

_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "put the ring on the peg", "place the nut onto the peg", "slide the ring down over the peg",
        "assemble the ring onto the pole", "fit the round nut over the peg", "thread the ring onto the post",
    ),
    "basketball-v3": (
        "dunk the ball into the basket", "put the ball in the hoop", "pick up the ball and drop it through the hoop",
        "score a basket with the ball", "place the ball into the basketball hoop", "slam dunk the ball",
    ),
    "bin-picking-v3": (
        "move the cube from one bin to the other", "pick the block out of the bin and put it in the other bin",
        "transfer the cube into the empty bin", "carry the cube to the second bin",
        "relocate the block to the other container", "take the cube and drop it in the other box",
    ),
    "box-close-v3": (
        "put the lid on the box", "close the box with its lid", "place the cover on top of the box",
        "pick up the lid and close the box", "cap the box", "shut the box by putting the lid on",
    ),
    "button-press-topdown-v3": (
        "press the button from the top", "push the button down", "press down on the button",
        "push the button from above", "hit the button with a downward press", "tap the button from overhead",
    ),
    "button-press-topdown-wall-v3": (
        "press the button from the top behind the wall", "push the button down past the wall",
        "press down on the button next to the wall", "reach over the wall and press the button down",
        "push the walled button from above", "press the button downward beside the barrier",
    ),
    "button-press-v3": (
        "press the button", "push the button forward", "press the button on the front of the box",
        "push the button in", "poke the button on the box", "press the button horizontally",
    ),
    "button-press-wall-v3": (
        "press the button behind the wall", "push the button in past the wall",
        "reach around the wall and press the button", "press the button that is blocked by a wall",
        "push in the button beyond the barrier", "get past the wall and hit the button",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine", "push the coffee machine button",
        "start the coffee machine", "press the coffee maker's button",
        "turn on the coffee machine with its button", "hit the button to brew coffee",
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine", "slide the cup out from under the coffee machine",
        "take the mug out of the coffee machine", "drag the coffee cup toward you",
        "move the mug back from the coffee maker", "retrieve the cup from the coffee machine",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine", "slide the cup into the coffee machine",
        "put the mug beneath the coffee spout", "move the cup forward to the coffee machine",
        "place the coffee cup under the machine", "shove the mug into the coffee maker",
    ),
    "dial-turn-v3": (
        "turn the dial", "rotate the dial", "spin the knob around",
        "twist the dial", "turn the knob", "rotate the round dial a quarter turn",
    ),
    "disassemble-v3": (
        "take the ring off the peg", "lift the nut off the peg", "remove the ring from the pole",
        "pull the ring up and off the peg", "disassemble the ring from the post", "unmount the nut from the peg",
    ),
    "door-close-v3": (
        "close the door", "push the door shut", "swing the door closed",
        "shut the door", "close the open door", "push the door until it closes",
    ),
    "door-lock-v3": (
        "lock the door", "turn the door lock down", "rotate the lock to lock the door",
        "press the lock lever down", "engage the door lock", "set the door lock",
    ),
    "door-open-v3": (
        "open the door", "pull the door open", "swing the door open",
        "open the door by its handle", "pull on the handle to open the door", "get the door open",
    ),
    "door-unlock-v3": (
        "unlock the door", "turn the door lock up", "rotate the lock to unlock the door",
        "lift the lock lever", "disengage the door lock", "release the lock on the door",
    ),
    "drawer-close-v3": (
        "close the drawer", "push the drawer shut", "slide the drawer closed",
        "push the drawer in", "shut the drawer", "slide the open drawer back in",
    ),
    "drawer-open-v3": (
        "open the drawer", "pull the drawer out", "slide the drawer open",
        "pull the drawer open by its handle", "get the drawer open", "draw the drawer out toward you",
    ),
    "faucet-close-v3": (
        "turn the faucet off", "close the faucet", "rotate the faucet handle to shut it",
        "turn off the tap", "shut off the water", "twist the faucet closed",
    ),
    "faucet-open-v3": (
        "turn the faucet on", "open the faucet", "rotate the faucet handle to open it",
        "turn on the tap", "start the water", "twist the faucet open",
    ),
    "hammer-v3": (
        "hammer the nail in", "pick up the hammer and hit the nail", "drive the nail with the hammer",
        "use the hammer to knock the nail in", "pound the nail with the hammer", "strike the nail using the hammer",
    ),
    "hand-insert-v3": (
        "put your hand into the hole", "insert the gripper into the hole", "reach into the hole in the table",
        "move the hand down into the opening", "stick the gripper in the hole", "place the hand inside the hole",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side", "push the side handle down", "press down on the handle sideways",
        "push the handle down from its side", "lower the handle from the side", "press the sideways handle",
    ),
    "handle-press-v3": (
        "press the handle down", "push the handle down", "press down on the handle",
        "lower the handle", "push the lever handle to the bottom", "press the handle all the way down",
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side", "lift the side handle", "pull the handle upward sideways",
        "raise the handle from the side", "pull up on the sideways handle", "lift the handle up from its side",
    ),
    "handle-pull-v3": (
        "pull the handle up", "lift the handle", "pull up on the handle",
        "raise the handle", "pull the handle to the top", "draw the handle upward",
    ),
    "lever-pull-v3": (
        "pull the lever up", "lift the lever", "raise the lever",
        "pull up on the lever", "rotate the lever upward", "flip the lever up",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole", "push the peg into the side hole", "put the peg in the hole",
        "slide the peg sideways into the hole", "fit the peg into the opening", "plug the peg into the hole",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg", "pull the peg out of the hole", "remove the peg from the side hole",
        "take the peg out", "extract the peg sideways", "draw the peg out of its socket",
    ),
    "pick-out-of-hole-v3": (
        "pick the puck out of the hole", "lift the puck out of the hole", "take the puck out of the hole",
        "grab the puck from the hole and raise it", "remove the puck from the hole", "pull the puck up out of the hole",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal", "put the puck at the target", "move the puck to the goal",
        "grasp the puck and set it down at the goal", "carry the puck to the target spot",
        "lift the puck and put it on the goal",
    ),
    "pick-place-wall-v3": (
        "pick up the puck and place it behind the wall", "lift the puck over the wall to the goal",
        "move the puck past the wall to the target", "carry the puck over the wall",
        "put the puck on the other side of the wall", "raise the puck above the wall and set it at the goal",
    ),
    "plate-slide-v3": (
        "slide the plate into the goal", "push the plate into the net", "slide the puck into the goal",
        "push the plate forward into the cage", "shove the plate into the goal", "score by sliding the plate in",
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal", "pull the plate out of the net", "slide the puck back toward you",
        "drag the plate back from the cage", "pull the plate out backward", "retrieve the plate from the goal",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal", "pull the plate out of the side net",
        "slide the puck back out sideways", "drag the plate out of the goal to the side",
        "pull the plate sideways from the cage", "retrieve the plate from the side goal",
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal", "push the plate into the net from the side",
        "slide the puck sideways into the goal", "push the plate sideways into the cage",
        "shove the plate into the goal sideways", "score by sliding the plate in from the side",
    ),
    "push-v3": (
        "push the puck to the goal", "slide the puck to the target", "push the puck along the table to the goal",
        "move the puck to the target by pushing", "nudge the puck to the goal", "shove the puck onto the target",
    ),
    "push-back-v3": (
        "push the puck back to the goal", "slide the puck backward to the target", "pull the puck back to the goal",
        "move the puck back toward the target", "bring the puck back to the goal", "drag the puck back onto the target",
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal", "slide the puck past the wall to the target",
        "push the puck to the goal behind the wall", "move the puck around the barrier to the goal",
        "nudge the puck past the wall", "get the puck around the wall onto the target",
    ),
    "reach-v3": (
        "reach the goal", "move the gripper to the target", "reach for the goal position",
        "put the hand at the target", "go to the goal", "move the end effector to the target point",
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall", "move the gripper over the wall to the target",
        "reach past the wall to the goal", "put the hand at the target beyond the wall",
        "go around the wall to the goal", "reach over the barrier to the target point",
    ),
    "shelf-place-v3": (
        "put the block on the shelf", "place the cube on the shelf", "pick up the block and set it on the shelf",
        "move the block onto the shelf", "lift the cube onto the shelf", "shelve the block",
    ),
    "soccer-v3": (
        "kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball",
        "roll the ball into the goal", "shoot the ball into the net", "get the soccer ball in the goal",
    ),
    "stick-pull-v3": (
        "use the stick to pull the container", "grab the stick and pull the thermos toward the goal",
        "pull the bottle with the stick", "pick up the stick and drag the container",
        "hook the container with the stick and pull it", "drag the thermos using the stick",
    ),
    "stick-push-v3": (
        "use the stick to push the container", "grab the stick and push the thermos to the goal",
        "push the bottle with the stick", "pick up the stick and shove the container",
        "push the container forward using the stick", "move the thermos by pushing it with the stick",
    ),
    "sweep-v3": (
        "sweep the puck off the table", "push the puck off the edge", "slide the puck off the table",
        "brush the puck off the side", "sweep the block off the table edge", "knock the puck off the table",
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole", "push the puck into the hole", "slide the puck into the hole",
        "brush the puck into the opening", "sweep the block into the hole", "get the puck into the hole",
    ),
    "window-close-v3": (
        "close the window", "slide the window shut", "push the window closed",
        "slide the window closed", "shut the window", "close the sliding window",
    ),
    "window-open-v3": (
        "open the window", "slide the window open", "push the window open",
        "slide the window to open it", "get the window open", "open the sliding window",
    ),
}


_ALOHA_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "transfer-cube": (
        "pick up the red cube with the right arm and hand it to the left arm",
        "transfer the cube from the right gripper to the left gripper",
        "lift the red block and pass it over to the other arm",
        "grab the cube with the right hand and give it to the left hand",
        "hand the red cube over from the right arm to the left one",
        "pass the block between the two grippers, right to left",
    ),
    "insertion": (
        "pick up the peg and the socket and insert the peg into the socket",
        "grab the socket with the left arm and the peg with the right arm, then put the peg in",
        "lift both parts and slide the red peg into the blue socket",
        "insert the peg into the socket in mid-air using both arms",
        "hold the socket in one gripper and push the peg into it with the other",
        "pick up the red peg and the blue socket and fit them together",
    ),
}

ALOHA_TASKS: tuple[str, ...] = tuple(_ALOHA_INSTRUCTIONS)
"""The bimanual ALOHA tasks (gym-aloha's ``AlohaTransferCube-v0`` and ``AlohaInsertion-v0`` scenes)."""


def _metaworld_splits() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    from metaworld import env_dict

    all_tasks = tuple(env_dict.ALL_V3_ENVIRONMENTS)
    sets = {
        "mt10": tuple(env_dict.MT10_V3),
        "mt50": all_tasks,
        "ml45_train": tuple(env_dict.ML45_V3["train"]),
        "ml45_test": tuple(env_dict.ML45_V3["test"]),
    }
    return all_tasks, sets


ALL_TASKS, _MW_SETS = _metaworld_splits()
"""The 50 Meta-World v3 environment names, in Meta-World's own order."""

TASK_SETS: dict[str, tuple[str, ...]] = {
    **_MW_SETS,
    # Object-centric goals visible in corner2, ~100% scripted expert success, modest initial-state randomization:
    # learnable by a small visuomotor policy from a few dozen demos each (measured rates in docs/simulation.md).
    "quickstart": (
        "button-press-topdown-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "plate-slide-v3",
        "handle-press-v3",
    ),
    "aloha": ALOHA_TASKS,
}
# The pretraining protocol's easier split (docs/pretraining.md): ML45's test tasks are medium/hard and may sit near
# 0% for both arms at CPU scale, so the quickstart tasks (learnable from a few dozen demos) are also held out, and
# pretraining uses the ML45 training tasks without them. Related tasks stay in pretraining (e.g. drawer-close is
# held out, but nothing else about drawers is removed): transfer from related skills is what pretraining should buy.
TASK_SETS["easy_heldout"] = TASK_SETS["quickstart"]
TASK_SETS["easy_pretrain"] = tuple(t for t in TASK_SETS["ml45_train"] if t not in TASK_SETS["easy_heldout"])
"""Named task sets: Meta-World's ``mt10``, ``mt50``, ``ml45_train``, ``ml45_test``, openlbm's ``quickstart``,
``aloha`` (both ALOHA tasks), and the pretraining protocol's easier split ``easy_pretrain`` (40 tasks) / ``easy_heldout`` (the 5 quickstart tasks)."""

TASK_SETS.update({f"mt50_{group}": tasks for group, tasks in METAWORLD_DIFFICULTY.items()})  # MT50's groups


if sorted(t for ts in METAWORLD_DIFFICULTY.values() for t in ts) != sorted(ALL_TASKS):  # pragma: no cover
    raise RuntimeError("METAWORLD_DIFFICULTY out of sync with metaworld's task list")
if set(_INSTRUCTIONS) != set(ALL_TASKS):  # pragma: no cover - guards a metaworld upgrade
    raise RuntimeError(f"instruction table out of sync with metaworld: {sorted(set(ALL_TASKS) ^ set(_INSTRUCTIONS))}")
_INSTRUCTIONS.update(_ALOHA_INSTRUCTIONS)

SUITE_TASKS: dict[str, tuple[str, ...]] = {"metaworld": ALL_TASKS, "aloha": ALOHA_TASKS}
"""Every task of each simulation suite."""

DEFAULT_TASKS: dict[str, str] = {"metaworld": "quickstart", "aloha": "aloha"}
"""The task set a command uses for a suite when no tasks are given."""


def suite_of(task: str) -> str:
    """The suite (``metaworld`` or ``aloha``) that runs ``task``."""
    for suite, tasks in SUITE_TASKS.items():
        if task in tasks:
            return suite
    raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(_INSTRUCTIONS)}")


def resolve_tasks(spec: str | Sequence[str], suite: str | None = None) -> list[str]:
    """Turn a set name (``"mt10"``), a comma list (``"reach-v3,push-v3"``) or a sequence into task names.

    Set names and task names may be mixed; duplicates are dropped keeping first-seen order. With ``suite``, every
    task must belong to that suite (one env type per run).
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item in TASK_SETS:
            names = list(TASK_SETS[item])
        elif item in _INSTRUCTIONS:
            names = [item]
        else:
            raise ValueError(
                f"unknown task or task set {item!r}; task sets: {', '.join(TASK_SETS)}; tasks: {', '.join(_INSTRUCTIONS)}"
            )
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(f"no tasks given; use a task set ({', '.join(TASK_SETS)}) or task names")
    if suite is not None:
        if suite not in SUITE_TASKS:
            raise ValueError(f"unknown suite {suite!r}; available: {', '.join(SUITE_TASKS)}")
        foreign = [t for t in out if t not in SUITE_TASKS[suite]]
        if foreign:
            raise ValueError(
                f"task(s) {', '.join(foreign)} are not in the {suite} suite (they belong to {suite_of(foreign[0])}); "
                f"use --suite {suite_of(foreign[0])}, or tasks of {suite} such as --tasks {DEFAULT_TASKS[suite]}"
            )
    return out


def instructions(task: str, split: Literal["train", "heldout", "all"] = "train") -> list[str]:
    """Paraphrases of ``task``'s instruction. ``train[0]`` is the canonical one."""
    if task not in _INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(_INSTRUCTIONS)}")
    phrases = list(_INSTRUCTIONS[task])
    if split == "train":
        return phrases[:-_HELDOUT]
    if split == "heldout":
        return phrases[-_HELDOUT:]
    if split == "all":
        return phrases
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def instruction_for(task: str, seed: int, split: Literal["train", "heldout"] = "train") -> str:
    """A paraphrase picked deterministically by ``seed`` (so a (task, seed) episode always reads the same)."""
    phrases = instructions(task, split)
    return phrases[seed % len(phrases)]
