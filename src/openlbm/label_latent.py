"""``lbm data label-latent``: label every frame of a dataset with a latent action model's code.

Frame ``t`` of an episode of ``N`` frames gets the code of the pair ``(o_t, o_{min(t+k, N-1)})`` (``k`` the
model's frame gap; past the episode end the last frame is repeated). The output is a NEW dataset folder: the input
plus two per-frame features, declared in ``meta/info.json``::

    latent_action        float32 [L]   the quantised code vector (L = groups x code_dim)
    latent_action_index  int64   [G]   the code index of each group (for analysis)

plus ``meta/latent_action.json`` (provenance: which model made them, the sha256 of its weights, its config, k, L,
the date, the openlbm version). Videos are hard-linked (copied across filesystems), never re-encoded; data
parquet files are rewritten with the two columns appended; stats gain the two features.

Writing is :func:`openlbm.data.derive.derive` (as for ``lbm data strip-actions``): the copy is assembled in a locked
hidden sibling folder and renamed into place when complete, so ``out`` holds the whole dataset or does not exist, and
a rerun after a crash clears the leftover and starts over.

It composes the dataset layer (frames decoded by ``RobotDataset.get_episode``) and a trained model (``policies``),
so it lives outside both packages, like ``train_command``.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openlbm.types import LATENT_ACTION_KEY

if TYPE_CHECKING:
    import numpy as np

    from openlbm.policies.latent_action import LAM

log = logging.getLogger(__name__)

LATENT_KEY = LATENT_ACTION_KEY  # the feature a mixture windows into Batch.latent_action
LATENT_INDEX_KEY = "latent_action_index"
PROVENANCE_PATH = "meta/latent_action.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute_labels(lam: LAM, src: Path, cameras: dict[str, str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Code vectors ``[N_frames, L]`` float32 and indices ``[N_frames, G]`` int64, by global frame index.

    ``cameras`` maps the model's camera names to the dataset's. Frames are decoded one episode at a time."""
    import numpy as np
    import torch

    from openlbm.data.dataset import RobotDataset
    from openlbm.types import camera_key, chw_from_hwc

    ds = RobotDataset(src, camera_keys=[camera_key(c) for c in cameras.values()])
    meta, k = ds.meta, lam.config.frame_gap
    codes = np.zeros((meta.num_frames, lam.config.model.latent_dim), np.float32)
    indices = np.zeros((meta.num_frames, lam.config.model.groups), np.int64)
    for ep in range(meta.num_episodes):
        data = ds.get_episode(ep)
        n, start = int(meta.ep_len[ep]), int(meta.ep_from[ep])
        frames = {mine: chw_from_hwc(data[camera_key(theirs)]) for mine, theirs in cameras.items()}  # [N, 3, H, W]
        later = torch.from_numpy(np.minimum(np.arange(n) + k, n - 1))
        for b in range(0, n, batch_size):
            sl = slice(b, min(n, b + batch_size))
            try:
                c, i = lam.encode({m: f[sl] for m, f in frames.items()}, {m: f[later[sl]] for m, f in frames.items()})
            except ValueError as e:
                raise ValueError(f"{src}, episode {ep}: {e}") from None
            codes[start + sl.start : start + sl.stop] = c.cpu().numpy()
            indices[start + sl.start : start + sl.stop] = i.cpu().numpy()
        log.debug("episode %d: %d frames labelled", ep, n)
    return codes, indices


def provenance(lam_path: Path, lam_dir: Path, lam: LAM, cameras: dict[str, str], src: Path, frames: int) -> dict[str, Any]:
    """The ``meta/latent_action.json`` record: which model (dir, weights hash, config) labelled which dataset, how."""
    import openlbm

    return {
        "lam_dir": str(lam_dir.resolve()),
        "lam_source": str(lam_path.resolve()),
        "weights_sha256": sha256_file(lam_dir / "model.safetensors"),
        "config": lam.config.to_dict(),
        "frame_gap": lam.config.frame_gap,
        "latent_dim": lam.config.model.latent_dim,
        "groups": lam.config.model.groups,
        "codebook_size": lam.config.model.codebook_size,
        "cameras": cameras,
        "pairing": "frame t: (o_t, o_min(t+k, N-1)), N the episode length",
        "source_dataset": str(src.resolve()),
        "frames": frames,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "openlbm_version": openlbm.__version__,
    }


def label_dataset(lam_path: Path, src: Path, out: Path, batch_size: int = 64, cameras: tuple[str, ...] = (),
                  device: str = "cpu") -> dict[str, Any]:
    """Write ``out`` = dataset ``src`` + latent action labels from the model at ``lam_path`` (run, checkpoint or LAM
    dir); returns the provenance record. ``cameras``: the dataset cameras fed to the model, in its order (default:
    the model's own camera names)."""
    import numpy as np

    from openlbm.data.dataset import DatasetMeta
    from openlbm.data.derive import check_destination, derive
    from openlbm.data.validate import require_valid
    from openlbm.policies.latent_action import LAM
    from openlbm.policies.policy_dir import resolve_policy_dir
    from openlbm.types import FeatureSpec

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    src, out = Path(src), Path(out)
    lam_dir = resolve_policy_dir(lam_path)
    lam = LAM.load(lam_dir, device)
    if cameras and len(cameras) != len(lam.cameras):
        raise ValueError(f"--cameras names {len(cameras)} camera(s); the model stacks {len(lam.cameras)}: "
                         f"{list(lam.cameras)}")
    cam_map = dict(zip(lam.cameras, cameras or lam.cameras, strict=True))
    require_valid([src])
    meta = DatasetMeta(src)
    taken = [k for k in (LATENT_KEY, LATENT_INDEX_KEY) if k in meta.features]
    if taken:
        raise ValueError(f"{src} already has feature(s) {taken}; label the unlabelled dataset instead")
    check_destination(src, out)
    codes, indices = compute_labels(lam, src, cam_map, batch_size)
    record = provenance(Path(lam_path), lam_dir, lam, cam_map, src, int(meta.num_frames))
    add = {LATENT_KEY: (FeatureSpec("float32", (lam.config.model.latent_dim,)), codes),
           LATENT_INDEX_KEY: (FeatureSpec("int64", (lam.config.model.groups,)), indices)}
    derive(src, out, "lbm data label-latent", add=add, files={PROVENANCE_PATH: record})
    usage = [len(np.unique(indices[:, g])) for g in range(indices.shape[1])]
    log.info("labelled %d frames of %s into %s; codes used per group: %s of %d", meta.num_frames, src, out, usage,
             lam.config.model.codebook_size)
    return record


@dataclass(frozen=True)
class LabelLatent:
    """Label every frame of a dataset with a latent action model's code of (frame t, frame t+k), into a new dataset
    folder (the input + ``latent_action`` / ``latent_action_index`` features + ``meta/latent_action.json``)."""

    lam: Path
    """The latent action model: a run dir of ``lbm train lam``, one of its checkpoint dirs, or a saved model dir."""
    dataset: Path
    """The dataset to label (LeRobot v3; left unchanged)."""
    out: Path
    """The new labelled dataset's folder (must not exist, or be empty, or be an interrupted label-latent output)."""
    batch_size: int = 64
    """Frame pairs per forward pass (memory grows with it: ~0.6 GB at 64 for two 64 px cameras)."""
    cameras: tuple[str, ...] = ()
    """The dataset's cameras fed to the model, in the model's camera order; default: the model's own camera names."""
    device: str = "cpu"
    """Torch device to run the model on (``cpu``, ``cuda``...)."""

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        record = label_dataset(self.lam, self.dataset, self.out, self.batch_size, self.cameras, self.device)
        print(f"wrote {self.out}: {record['frames']} frames labelled with {LATENT_KEY} [{record['latent_dim']}] and "
              f"{LATENT_INDEX_KEY} [{record['groups']}] (k = {record['frame_gap']}); provenance in "
              f"{self.out / PROVENANCE_PATH}; `lbm data latent-report {self.out}` analyses the codes")
        return 0


COMMANDS: dict[str, type] = {"label-latent": LabelLatent}
