"""Meta-World MT50's difficulty groups: plain data, importable without the simulator (evaluation summaries and
reports group their records by it; :mod:`openlbm.envs.tasks` checks the lists against the installed metaworld)."""

from __future__ import annotations

from collections.abc import Sequence

METAWORLD_DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
        "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
        "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
        "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
        "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
        "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
        "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3",
    ),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}
"""Meta-World MT50's difficulty groups (28 / 11 / 6 / 5 tasks) exactly as LeRobot's Meta-World environment groups
them (``lerobot/envs/metaworld_config.json``, after Seo et al., "Masked World Models", 2022): published MT50
results of LeRobot-evaluated policies report success per group and the mean of the group means. Also task sets
``mt50_easy``, ``mt50_medium``, ``mt50_hard``, ``mt50_very_hard``."""


def task_groups(tasks: Sequence[str]) -> dict[str, list[str]]:
    """Difficulty group -> the given tasks in it (groups in :data:`METAWORLD_DIFFICULTY` order, empty ones left
    out), when every task has a group; ``{}`` otherwise (e.g. ALOHA, or an eval with no tasks)."""
    group_of = {t: g for g, ts in METAWORLD_DIFFICULTY.items() for t in ts}
    if not tasks or any(t not in group_of for t in tasks):
        return {}
    return {g: [t for t in tasks if group_of[t] == g] for g in METAWORLD_DIFFICULTY if any(group_of[t] == g for t in tasks)}
