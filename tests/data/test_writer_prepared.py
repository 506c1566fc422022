"""An episode encoded elsewhere (``prepare_episode`` + ``save_prepared``) is stored exactly like ``add_frame``'s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import CAM, FEATURES, action_of, smooth, state_of, write_episodes

from openlbm.data.dataset import RobotDataset
from openlbm.data.writer import DatasetWriter, prepare_episode


def test_prepared_episodes_equal_add_frame_episodes(tmp_path: Path) -> None:
    lengths = (5, 8, 6)
    a = DatasetWriter.create(tmp_path / "a", FEATURES, fps=10.0, robot_type="toy")
    write_episodes(a, lengths)
    b = DatasetWriter.create(tmp_path / "b", FEATURES, fps=10.0, robot_type="toy")
    for ep, n in enumerate(lengths):
        frames = {CAM: np.stack([smooth(ep, t) for t in range(n)]),
                  "observation.state": np.stack([state_of(ep, t) for t in range(n)]),
                  "action": np.stack([action_of(ep, t) for t in range(n)]),
                  "next.success": (np.arange(n) == n - 1).reshape(n, 1)}
        prep = prepare_episode(b.root, b.info, frames, task=f"task {ep % 2}")
        assert all(p.exists() for p in prep.videos.values())
        assert b.save_prepared(prep) == ep
        assert not any(p.exists() for p in prep.videos.values())  # moved into the dataset
    for w in (a, b):
        w.finalize()
    ra, rb = RobotDataset(tmp_path / "a"), RobotDataset(tmp_path / "b")
    assert ra.meta.tasks == rb.meta.tasks
    for e in range(len(lengths)):
        x, y = ra.get_episode(e), rb.get_episode(e)
        assert sorted(x) == sorted(y)
        for k in x:
            assert x[k] == y[k] if k == "task" else np.array_equal(x[k], y[k]), (e, k)
    sa, sb = (json.loads((tmp_path / r / "meta/stats.json").read_text()) for r in "ab")
    assert sa == sb


def test_prepared_episode_with_other_features_is_refused(tmp_path: Path) -> None:
    w = DatasetWriter.create(tmp_path / "a", FEATURES, fps=10.0)
    frames = {CAM: np.stack([smooth(0, t) for t in range(3)]), "action": np.zeros((3, 2), np.float32)}
    prep = prepare_episode(w.root, w.info, frames, task="t")
    with pytest.raises(ValueError, match="prepared episode has videos"):
        w.save_prepared(prep)
