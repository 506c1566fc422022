"""Render docs/img/cameras.png: the Meta-World cameras on three tasks at their first frame.

Run from the repository root: ``.venv/bin/python docs/img/cameras.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from openlbm.envs.metaworld import MetaWorldConfig  # noqa: E402

TASKS = ("drawer-open-v3", "button-press-topdown-v3", "plate-slide-v3")
CAMERAS = ("corner2", "corner2_lerobot", "gripperPOV")


def main(out: Path = Path(__file__).with_suffix(".png")) -> None:
    cfg = MetaWorldConfig(cameras=CAMERAS, image_size=(256, 256))
    fig, axes = plt.subplots(len(CAMERAS), len(TASKS), figsize=(8, 8.2))
    for col, task in enumerate(TASKS):
        env = cfg.build(task, seed=0)
        frame, _ = env.reset(seed=0)
        env.close()
        axes[0, col].set_title(f'{task}\n"{frame.instruction}"', fontsize=8)
        for row, cam in enumerate(CAMERAS):
            ax = axes[row, col]
            ax.imshow(frame.images[cam])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(cam, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
