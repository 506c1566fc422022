"""Tiny synthetic datasets with a known pixel pattern, shared by the data tests (imported via conftest's path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot_v3"
CAM = "observation.images.cam"


def pattern(ep: int, t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """The LeRobot fixture pattern: R = 2x + 9t, G = 3y + 60e, B = 40e (mod 256)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(2 * x + 9 * t) % 256, (3 * y + 60 * ep) % 256, np.full_like(x, (40 * ep) % 256)], -1).astype(np.uint8)


def smooth(ep: int, t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A smooth image (compresses well: PSNR checks measure the codec, not aliasing of sharp wraps)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 90 * np.sin(x / 9 + t / 3)
    g = 128 + 90 * np.cos(y / 10 + ep)
    b = 64 + 30 * (x + y) / (h + w) + 10 * ep
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def state_of(ep: int, t: int) -> np.ndarray:
    return np.array([ep, t, 0.5 * t - ep], np.float32)


def action_of(ep: int, t: int) -> np.ndarray:
    return np.array([ep * 100 + t, -t], np.float32)


FEATURES = {
    CAM: FeatureSpec("video", (32, 32, 3), ("height", "width", "channels")),
    "observation.state": FeatureSpec("float32", (3,), ("a", "b", "c")),
    "action": FeatureSpec("float32", (2,)),
    "next.success": FeatureSpec("bool", (1,)),
}


def write_episodes(w: DatasetWriter, lengths: Sequence[int], first_ep: int = 0, image: Callable = smooth) -> None:
    for k, n in enumerate(lengths):
        ep = first_ep + k
        for t in range(n):
            w.add_frame({CAM: image(ep, t), "observation.state": state_of(ep, t), "action": action_of(ep, t),
                         "next.success": t == n - 1}, task=f"task {ep % 2}")
        assert w.save_episode() == ep


def make_dataset(root: Path, lengths: Sequence[int] = (5, 8, 6), codec: str = "h264", finalize: bool = True,
                 image: Callable = smooth, fps: float = 10.0) -> Path:
    w = DatasetWriter.create(root, FEATURES, fps=fps, robot_type="toy", video_codec=codec)
    write_episodes(w, lengths, image=image)
    if finalize:
        w.finalize()
    return root



LATENT = "latent_action"


def latent_of(ep: int, t: int) -> np.ndarray:
    """A 3-D latent label whose first two dims equal :func:`action_of` (windows can be compared to the action's)."""
    return np.array([ep * 100 + t, -t, 0.25 * ep], np.float32)


def make_variant(root: Path, lengths: Sequence[int] = (5, 8, 6), action: bool = True, state: bool = True,
                 latent: bool = False, robot_type: str = "toy") -> Path:
    """The ``tiny`` episodes (same images, state, actions and tasks) with features left out or ``latent_action`` added."""
    feats = {CAM: FEATURES[CAM]}
    if state:
        feats["observation.state"] = FEATURES["observation.state"]
    if action:
        feats["action"] = FEATURES["action"]
    if latent:
        feats[LATENT] = FeatureSpec("float32", (3,))
    with DatasetWriter.create(root, feats, fps=10.0, robot_type=robot_type) as w:
        for ep, n in enumerate(lengths):
            for t in range(n):
                frame = {CAM: smooth(ep, t), "observation.state": state_of(ep, t), "action": action_of(ep, t),
                         LATENT: latent_of(ep, t)}
                w.add_frame({k: v for k, v in frame.items() if k in feats}, task=f"task {ep % 2}")
            w.save_episode()
    return root


def edit_episodes(root: Path, ep: int, rel: str, **values: object) -> None:
    """Overwrite columns of episode ``ep``'s row in the episodes parquet ``rel`` (a planted metadata defect)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(root / rel).to_pylist()
    rows[[r["episode_index"] for r in rows].index(ep)].update(values)
    pq.write_table(pa.Table.from_pylist(rows), root / rel)


def set_vector_value(root: Path, rel: str, key: str, row: int, dim: int, value: float) -> None:
    """Rewrite one entry of the float vector column ``key`` of the data parquet ``rel``, keeping a readable file
    with its schema metadata: a corruption that only content hashes or value checks can see."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(root / rel)
    values = np.stack(t.column(key).to_pylist()).astype(np.float32)  # [N, D]
    values[row, dim] = value
    col = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])  # [N*D] -> [N, D]
    t = t.set_column(t.column_names.index(key), key, col)
    pq.write_table(t.replace_schema_metadata(pq.read_schema(root / rel).metadata), root / rel)
