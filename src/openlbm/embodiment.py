"""What one robot/camera setup looks like to a policy, to a dataset mixture and on the policy server's wire.

Torch-free on purpose: the policy server's protocol and the robot-side client import it without torch.
(:mod:`openlbm.types` re-exports it as part of the data contract.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openlbm.bounds import DEFAULT_MAX_ABS


@dataclass(frozen=True)
class EmbodimentSpec:
    """What one robot/camera setup looks like to a policy. Datasets are mapped onto it; envs must match it."""

    name: str
    """Identifier, e.g. ``"metaworld_sawyer"``. Keys the policy's per-embodiment projections and stats."""
    cameras: tuple[str, ...]
    """Camera names (without the ``observation.images.`` prefix), in the order the policy consumes them."""
    image_size: tuple[int, int]
    """``(height, width)`` of every camera image fed to the policy."""
    state_dim: int
    """Native proprioceptive state dimension (before padding to the policy's max)."""
    action_dim: int
    """Native action dimension (before padding to the policy's max)."""
    fps: float = 10.0
    """Control frequency in Hz."""
    max_abs_state: float = DEFAULT_MAX_ABS
    """Largest valid ``|state|`` value (:mod:`openlbm.bounds`): the training data's declared bound, which the
    policy server applies to requests, so what trains and what is served agree."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cameras": list(self.cameras),
            "image_size": list(self.image_size),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "fps": self.fps,
            "max_abs_state": self.max_abs_state,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbodimentSpec:
        """Read :meth:`to_dict` output (also the server metadata's ``embodiments`` entries, with ``name`` added)."""
        return cls(
            name=str(d["name"]),
            cameras=tuple(str(c) for c in d["cameras"]),
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            state_dim=int(d["state_dim"]),
            action_dim=int(d["action_dim"]),
            fps=float(d.get("fps", 10.0)),
            max_abs_state=float(d.get("max_abs_state", DEFAULT_MAX_ABS)),
        )
