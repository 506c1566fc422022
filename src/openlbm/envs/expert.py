"""Meta-World's scripted experts (``metaworld.policies``) behind the openlbm :class:`~openlbm.types.PolicyLike` API.

The experts are stateless functions of the full Meta-World observation (``obs.privileged``), so batching is a loop
over the batch and ``reset`` only matters for the optional action noise, which is seeded per slot so that an
episode's noise depends only on ``(noise_seed, slot episode)``, not on what other slots are doing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from openlbm.envs.metaworld import MetaWorldConfig, embodiment
from openlbm.envs.tasks import ALL_TASKS
from openlbm.types import EmbodimentSpec, Observation


def expert_policy_for(task: str):  # noqa: ANN201 - metaworld's Policy has no public type
    """A fresh ``metaworld.policies`` expert for ``task``."""
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted expert for task {task!r}; valid tasks: {', '.join(ALL_TASKS)}")
    return ENV_POLICY_MAP[task]()


class ScriptedExpert:
    """PolicyLike scripted expert. Reads ``obs.task`` and ``obs.privileged``; ignores images.

    ``action_noise`` is the std of Gaussian noise added to the expert action (before clipping to [-1, 1]), for
    demonstration diversity. Call ``reseed(slot, seed)`` at each episode start to make the noise reproducible.
    """

    def __init__(
        self, env_cfg: MetaWorldConfig | None = None, action_noise: float = 0.0, seed: int = 0
    ) -> None:
        if action_noise < 0 or not np.isfinite(action_noise):
            raise ValueError(f"action_noise must be a finite std >= 0, got {action_noise}")
        self.embodiment: EmbodimentSpec = embodiment(env_cfg)
        self.action_noise = float(action_noise)
        self._seed = int(seed)
        self._policies: dict[str, object] = {}
        self._rngs: dict[int, np.random.Generator] = {}

    def _policy(self, task: str):  # noqa: ANN202
        if task not in self._policies:
            self._policies[task] = expert_policy_for(task)
        return self._policies[task]

    def reseed(self, slot: int, seed: int) -> None:
        """Make slot ``slot``'s noise stream a pure function of ``seed`` (e.g. the episode seed)."""
        self._rngs[slot] = np.random.default_rng([self._seed, int(seed)])

    def reset(self, indices: Sequence[int] | None = None) -> None:
        if indices is None:
            self._rngs.clear()
            return
        for i in indices:
            self._rngs.pop(int(i), None)

    def act_numpy(self, privileged: np.ndarray, task: str, slot: int = 0) -> np.ndarray:
        """One expert action (float32 [4], within [-1, 1]) for one full Meta-World observation."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            a = np.asarray(self._policy(task).get_action(np.asarray(privileged, dtype=np.float64)), dtype=np.float64)
        if self.action_noise > 0:
            rng = self._rngs.setdefault(slot, np.random.default_rng([self._seed, slot]))
            a = a + rng.normal(0.0, self.action_noise, size=a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def select_action(self, obs: Observation) -> Tensor:
        if obs.privileged is None or obs.task is None:
            raise ValueError(
                "ScriptedExpert needs obs.privileged (the full Meta-World observation) and obs.task; "
                "build observations from MetaWorldEnv frames"
            )
        priv = obs.privileged.detach().cpu().numpy()  # [B, D]
        actions = [self.act_numpy(priv[i], obs.task[i], slot=i) for i in range(obs.batch_size)]
        return torch.from_numpy(np.stack(actions))  # [B, 4]
