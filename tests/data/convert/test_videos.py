"""``lbm data import-videos``: captioned video files -> an action-less, state-less v3 dataset (real CLI, real PyAV)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from convert_helpers import MIN_PSNR_DB, psnr

from cli_helpers import assert_one_line_error
from openlbm.cli import main
from openlbm.data.collate import collate_batch
from openlbm.data.convert.source import SourceError
from openlbm.data.convert.videos import read_captions
from openlbm.data.dataset import RobotDataset
from openlbm.data.mixture import DataConfig, SourceConfig
from openlbm.data.validate import validate_dataset
from openlbm.data.video import encode_video


def level(t: int) -> int:
    """Gray level of source frame ``t``: after re-encoding, a frame's mean names the source frame it came from."""
    return 16 + 12 * t


def frames(n: int, h: int = 48, w: int = 64, bands: int = 0) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``: a smooth gradient around :func:`level`, with white side bands ``bands`` px wide."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([np.clip(level(t) + (x + y) // 16 - 3, 0, 255) for t in range(n)])[..., None].repeat(3, -1)
    if bands:
        out[:, :, :bands] = out[:, :, w - bands :] = 255
    return out.astype(np.uint8)


def write_foreign(path: Path, f: np.ndarray, fps: int, codec: str) -> None:
    """A container as web video comes (webm/VP9 with millisecond timestamps, mkv/MPEG-4 part 2, ...)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = f.shape[2], f.shape[1], "yuv420p"
        for img in f:
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode(None))


def clip(path: Path, n: int, fps: float = 15.0, caption: str | None = None, codec: str | None = None,
         **kw: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = frames(n, **kw)
    if codec is None:
        encode_video(path, f, fps)
    else:
        write_foreign(path, f, int(fps), codec)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return f


def lbm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=300)


def test_sidecar_captions_keep_every_frame_at_the_source_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "videos"
    a = clip(src / "open.mp4", 9, caption="  open the drawer\n")
    b = clip(src / "kitchen" / "press.mp4", 6, caption="the gripper is above the red button")
    (src / "notes.md").write_text("not a video")
    out = tmp_path / "ds"
    assert main(["data", "import-videos", str(src), str(out), "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")
    ds = RobotDataset(out)
    m = ds.meta
    assert (m.fps, m.num_episodes, list(m.ep_len), m.camera_keys) == (15.0, 2, [6, 9], ["observation.images.camera"])
    assert (m.has_action, m.has_state, m.robot_type) == (False, False, "")
    assert [m.task_of_episode(e) for e in range(2)] == ["the gripper is above the red button", "open the drawer"]
    for ep, want in enumerate((b, a)):  # sorted by path: kitchen/press.mp4 < open.mp4
        got = ds.get_episode(ep)["observation.images.camera"]
        assert got.shape == want.shape and psnr(got, want) >= MIN_PSNR_DB
    assert validate_dataset(out) == []
    assert main(["data", "info", str(out)]) == 0
    assert "actions: no (action-less), state: no" in capsys.readouterr().out
    # it mixes as its own state-less, action-less embodiment
    data = DataConfig(sources=(SourceConfig(out, embodiment="human"),), num_workers=0).build(None, 2, 3, 2, 0)
    assert (data.embodiments[0].state_dim, data.embodiments[0].action_dim) == (0, 0)
    batch = collate_batch([data.dataset[0], data.dataset[14]])
    batch.validate()
    assert batch.action_is_pad.all() and batch.obs.state.shape == (2, 2, 0)


def test_caption_file_resampling_crop_and_names(tmp_path: Path) -> None:
    src = tmp_path / "videos"
    clip(src / "a.webm", 12, fps=15.0, bands=8, codec="libvpx-vp9")  # 0.8 s; white bands outside the center square
    clip(src / "b.mkv", 3, fps=30.0, bands=8, codec="mpeg4")  # 0.1 s
    lines = [{"video": "a.webm", "caption": "push the puck"}, {"video": "b.mkv", "caption": "reach the wall"}]
    (src / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "ds"
    assert main(["data", "import-videos", str(src), str(out), "--fps", "10", "--size", "32", "--camera", "front",
                 "--embodiment", "human", "--workers", "2"]) == 0
    ds = RobotDataset(out)
    assert (ds.meta.fps, ds.meta.robot_type, ds.meta.camera_keys) == (10.0, "human", ["observation.images.front"])
    assert ds.meta.tasks == ["push the puck", "reach the wall"] and list(ds.meta.ep_len) == [8, 1]
    got = ds.get_episode(0)["observation.images.front"]
    assert got.shape == (8, 32, 32, 3)
    # output frame i at i/10 s shows source frame floor(1.5 i); the bands were cropped away (else the mean is ~+50)
    picked = [int(round((f.mean() - 16) / 12)) for f in got.astype(np.float64)]
    assert picked == [0, 1, 3, 4, 6, 7, 9, 10], [f.mean() for f in got]
    assert got.max() < 200
    assert validate_dataset(out) == []
    # a re-run with other settings is refused instead of mixing two imports
    proc = lbm("data", "import-videos", str(src), str(out), "--fps", "5", "--size", "32", "--camera", "front",
               "--embodiment", "human")
    assert proc.returncode == 2 and "different settings" in proc.stderr and "'fps'" in proc.stderr


def test_read_captions_formats_and_mistakes(tmp_path: Path) -> None:
    root = tmp_path / "v"
    (root / "sub").mkdir(parents=True)
    videos = [root / "a.mp4", root / "sub" / "b.mp4"]
    (root / "captions.json").write_text(json.dumps({"a.mp4": " first ", "sub/b.mp4": "second"}))
    (root / "a.txt").write_text("ignored: the mapping file wins")
    assert read_captions(root, videos) == ["first", "second"]
    (root / "captions.json").write_text(json.dumps({"a.mp4": "first", "sub/b.mp4": "second", "c.mp4": "x"}))
    with pytest.raises(SourceError, match=r"captions for \['c.mp4'\] but no such video"):
        read_captions(root, videos)
    (root / "captions.json").write_text(json.dumps({"a.mp4": "first", "sub/b.mp4": "   "}))
    with pytest.raises(SourceError, match=r"b.mp4: empty or non-text caption"):
        read_captions(root, videos)
    (root / "captions.jsonl").write_text('{"video": "a.mp4", "caption": "x"}\n')
    with pytest.raises(SourceError, match="both captions.json and captions.jsonl"):
        read_captions(root, videos)
    (root / "captions.json").unlink()
    with pytest.raises(SourceError, match=r"sub/b.mp4: no caption \(no key 'sub/b.mp4' in .*captions.jsonl\)"):
        read_captions(root, videos)
    (root / "captions.jsonl").write_text('{"video": "a.mp4", "text": "x"}\n')
    with pytest.raises(SourceError, match=r"captions.jsonl, line 1: expected"):
        read_captions(root, videos)
    (root / "captions.jsonl").unlink()
    with pytest.raises(SourceError, match=r"sub/b.mp4: no caption \(b.txt beside it"):
        read_captions(root, videos)


MISTAKES = {
    "missing caption": ("no caption", "b.mp4"),
    "undecodable video": ("undecodable video", "b.mp4"),
    "empty folder": ("no video files", "videos"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_are_one_line_errors_and_a_fixed_folder_resumes(tmp_path: Path, mistake: str) -> None:
    src, out = tmp_path / "videos", tmp_path / "ds"
    src.mkdir()
    if mistake != "empty folder":
        clip(src / "a.mp4", 4, caption="first")
        if mistake == "missing caption":
            clip(src / "b.mp4", 5)
        else:
            (src / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # not a decodable video
            (src / "b.txt").write_text("second")
    proc = lbm("data", "import-videos", str(src), str(out), "--workers", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_line_error(proc, MISTAKES[mistake])
    if mistake != "undecodable video":
        return
    assert RobotDataset(out).meta.num_episodes == 1  # the good video before the bad one stays committed
    clip(src / "b.mp4", 5, caption="second")  # fixed: the re-run continues with the second video
    proc = lbm("data", "import-videos", str(src), str(out), "--workers", "1")
    assert proc.returncode == 0 and "converted 1 episodes (2 episodes" in proc.stdout, proc.stdout + proc.stderr
    assert list(RobotDataset(out).meta.ep_len) == [4, 5] and validate_dataset(out) == []
