"""``lbm data embed``: a frozen vision encoder's features for every frame of a dataset, into a feature cache.

It composes the dataset layer and a policy's encoder (``openlbm.train.features`` does the work, as ``lbm train``
does on first use), so it lives outside both packages, like ``label_latent``; heavy imports wait for ``run`` so that
``lbm data ...`` starts fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from openlbm.errors import UserError


@dataclass(frozen=True)
class Embed:
    """Compute a frozen vision encoder's features for every frame of a dataset into a feature cache, ahead of
    training (``lbm train`` builds the same cache on first use; runs given ``--feature-cache DIR`` then read it)."""

    dataset: Path
    """The dataset (LeRobot v3; validated first, left unchanged)."""
    cache: Path
    """The feature-cache folder that training will be pointed at (``lbm train ... --feature-cache DIR``)."""
    preset: str = "small"
    """Policy preset whose (frozen) vision encoder computes the features, with its pretrained weights."""
    policy: Path | None = None
    """A trained policy (run dir, checkpoint dir or policy dir) whose encoder to use instead of the preset's."""
    image_size: tuple[int, int] | None = None
    """``H W`` the policy sees the cameras at; default: the dataset's own size."""
    cameras: tuple[str, ...] = ()
    """Cameras to embed (names, e.g. ``corner2``), as the policy will use them; default: all of the dataset's."""

    def run(self) -> int:
        from openlbm.configs.presets import policy_preset
        from openlbm.data.dataset import DatasetMeta
        from openlbm.data.validate import require_valid
        from openlbm.policies.lbm import LBMPolicy
        from openlbm.policies.policy_dir import resolve_policy_dir
        from openlbm.policies.pretrained import load_vision_weights
        from openlbm.train.features import cache_for
        from openlbm.types import camera_key

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        require_valid([self.dataset])
        meta = DatasetMeta(self.dataset)
        cams = [camera_key(c) for c in self.cameras] or list(meta.camera_keys)
        missing = [c for c in cams if c not in meta.camera_keys]
        if missing:
            raise UserError(f"{self.dataset}: no camera(s) {missing}; the dataset has {list(meta.camera_keys)}")
        size = self.image_size or tuple(meta.features[cams[0]].shape[:2])
        if self.policy is not None:
            vision = LBMPolicy.load(resolve_policy_dir(self.policy)).model.vision
        else:
            cfg = policy_preset(self.preset).vision
            vision = cfg.build(8)
            if cfg.pretrained is not None or cfg.imagenet_weights:
                load_vision_weights(vision, cfg.pretrained)
        vision.cfg.check_image_size(size)
        cache = cache_for(vision, self.dataset, sorted(cams), size, self.cache)
        print(f"feature cache {cache.path}: {cache.info['num_frames']} frames x {len(cams)} camera(s), "
              f"maps {sorted(set(cache.cameras.values()))}")
        return 0


COMMANDS: dict[str, type] = {"embed": Embed}
