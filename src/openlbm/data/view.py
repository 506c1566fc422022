"""Render one episode: a PNG contact sheet (cameras x time, instruction, action/state plots) or an MP4 of the cameras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openlbm.data.dataset import RobotDataset
from openlbm.data.video import encode_video
from openlbm.errors import UserError
from openlbm.types import ACTION_KEY, IMAGE_PREFIX, STATE_KEY


def render_episode(root: Path, episode: int, out: Path, columns: int = 8) -> Path:
    """Write ``out`` (``.png`` contact sheet or ``.mp4`` side-by-side camera video) for ``episode``; returns it."""
    if out.suffix not in (".png", ".mp4"):
        raise ValueError(f"--out must end in .png or .mp4, got {out}")
    ds = RobotDataset(root)
    if not 0 <= episode < ds.meta.num_episodes:
        raise UserError(f"--episode {episode}: {root} has episodes 0..{ds.meta.num_episodes - 1}")
    ep = ds.get_episode(episode)
    cams = ds.camera_keys
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".mp4":
        if not cams:
            raise ValueError(f"{root} has no cameras to put in a video; use a .png output")
        frames = np.concatenate([ep[c] for c in cams], axis=2)  # [N, H, W*cams, 3]
        scale = max(1, 256 // frames.shape[1])
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour upscale for viewing
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        encode_video(out, np.ascontiguousarray(frames), ds.meta.fps, gop=30)
        return out
    return _contact_sheet(ds, episode, ep, cams, out, columns)


def _contact_sheet(ds: RobotDataset, episode: int, ep: dict, cams: list[str], out: Path, columns: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(ds.meta.ep_len[episode])
    picks = np.unique(np.linspace(0, n - 1, min(columns, n)).round().astype(int))
    plots = [k for k in (ACTION_KEY, STATE_KEY) if k in ep]
    rows = len(cams) + len(plots)
    fig = plt.figure(figsize=(1.6 * len(picks), 1.6 * len(cams) + 2.2 * len(plots) + 0.6))
    grid = fig.add_gridspec(rows, len(picks), height_ratios=[1] * len(cams) + [1.4] * len(plots))
    for r, cam in enumerate(cams):
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(ep[cam][t])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
            if c == 0:
                ax.set_ylabel(cam.removeprefix(IMAGE_PREFIX), fontsize=8)
    time = np.arange(n) / ds.meta.fps
    for i, key in enumerate(plots):
        ax = fig.add_subplot(grid[len(cams) + i, :])
        values = ep[key].reshape(n, -1)  # [N, *shape] -> [N, D]
        names = ds.meta.features[key].names or tuple(str(d) for d in range(values.shape[1]))
        for d in range(values.shape[1]):
            ax.plot(time, values[:, d], label=str(names[d]) if d < len(names) else str(d))
        ax.set_ylabel(key, fontsize=8)
        ax.legend(fontsize=6, loc="upper right", ncol=min(8, values.shape[1]))
        ax.set_xlabel("seconds", fontsize=8)
    fig.suptitle(f"{ds.root.name} episode {episode} ({n} frames): {ep['task']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
