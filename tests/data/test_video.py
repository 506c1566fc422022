"""``VideoReader.frames_at``: request order kept, each distinct frame decoded once per window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openlbm.data.video import VideoReader, encode_video


def _video(path: Path, n: int = 12) -> Path:
    frames = np.stack([np.full((16, 16, 3), 20 * i, dtype=np.uint8) for i in range(n)])  # frame i: gray 20 * i
    encode_video(path, frames, fps=10.0)
    return path


def test_a_window_with_repeated_frames_decodes_each_once(tmp_path: Path) -> None:
    path = _video(tmp_path / "v.mp4")
    plain = VideoReader(path, tolerance_s=0.02)
    once = plain.frames_at([0.5])
    decoded_once = plain.decoded
    clamped = VideoReader(path, tolerance_s=0.02)
    window = clamped.frames_at([1.1, 0.5, 1.1, 1.1])  # a window past the episode end repeats its last frame
    both = VideoReader(path, tolerance_s=0.02)
    both.frames_at([0.5, 1.1])
    assert clamped.decoded == both.decoded  # the repeats cost nothing
    assert decoded_once <= both.decoded
    assert np.abs(window[1].astype(int) - once[0].astype(int)).mean() < 4  # codec noise only
    assert np.array_equal(window[0], window[2]) and np.array_equal(window[0], window[3])
    assert abs(int(window[0].mean()) - 220) < 6 and abs(int(window[1].mean()) - 100) < 6
