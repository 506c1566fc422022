"""The simulation suites behind ``--suite``: each suite's env config, scripted expert and feature names, in one place.

``metaworld`` is the Sawyer arm (4-d end-effector deltas, 80 Hz); ``aloha`` the bimanual ALOHA (14-d joint
positions, 50 Hz). Both env configs are frozen dataclasses with the same fields (``cameras``, ``image_size``,
``max_steps``, ``fps``) and methods (``build(task, seed)``, ``embodiment()``), so the rollout runner, demo generation
and evaluation treat them alike; only the functions below look at the suite name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from openlbm.types import PolicyLike

Suite = Literal["metaworld", "aloha"]
SUITES: tuple[str, ...] = ("metaworld", "aloha")


def _check(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")


def env_config(
    suite: str,
    cameras: tuple[str, ...] | None = None,
    image_size: tuple[int, int] | None = None,
    max_steps: int | None = None,
) -> Any:
    """The suite's env config (``MetaWorldConfig`` / ``AlohaConfig``) with the given fields overriding its defaults."""
    _check(suite)
    if suite == "aloha":
        import importlib.util

        if importlib.util.find_spec("gym_aloha") is None:
            raise ValueError("the aloha suite needs gym-aloha: pip install -e '.[sim,aloha]' (see pyproject.toml)")
        from openlbm.envs.aloha import AlohaConfig

        base: Any = AlohaConfig()
    else:
        from openlbm.envs.metaworld import MetaWorldConfig

        base = MetaWorldConfig()
    overrides: dict[str, Any] = {}
    if cameras is not None:
        overrides["cameras"] = tuple(cameras)
    if image_size is not None:
        overrides["image_size"] = tuple(image_size)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    return replace(base, **overrides)


def robot_name(suite: str) -> str:
    """The embodiment name the suite's robot has (a multi-embodiment policy acts as this one in the suite)."""
    return env_config(suite).embodiment().name


def scripted_expert(suite: str, env_cfg: Any, action_noise: float = 0.0, seed: int = 0) -> PolicyLike:
    """The suite's scripted expert (a PolicyLike that reads ``obs.privileged``)."""
    _check(suite)
    if suite == "aloha":
        from openlbm.envs.aloha_expert import AlohaExpert

        return AlohaExpert(env_cfg, action_noise=action_noise, seed=seed)
    from openlbm.envs.expert import ScriptedExpert

    return ScriptedExpert(env_cfg, action_noise=action_noise, seed=seed)


def feature_names(suite: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the state dims and of the action dims, as written into a dataset's ``info.json``."""
    _check(suite)
    if suite == "aloha":
        from openlbm.envs.aloha import JOINT_NAMES

        return JOINT_NAMES, JOINT_NAMES
    return ("x", "y", "z", "gripper"), ("dx", "dy", "dz", "gripper")
