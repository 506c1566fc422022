"""Small H.264 MP4 clips of rollouts (PyAV, yuv420p: plays in every browser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encode_mp4(frames: np.ndarray, path: Path, fps: float = 20.0, crf: int = 28) -> Path:
    """Write uint8 ``[T, Hi, Wi, 3]`` frames as an H.264/yuv420p MP4 (odd sizes are padded to even)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: video frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    # yuv420p subsamples chroma 2x2, so H.264 needs even sizes: pad by edge replication.
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")  # [T, H+ph, W+pw, 3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = w + pw, h + ph
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "movflags": "+faststart"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path
