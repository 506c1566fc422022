"""Write -> read round trips, LeRobot-written fixtures, windows and padding at episode edges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import (
    CAM,
    FEATURES,
    FIXTURES,
    LATENT,
    action_of,
    latent_of,
    make_dataset,
    make_variant,
    pattern,
    smooth,
    state_of,
)

from openlbm.data.dataset import RobotDataset
from openlbm.data.writer import DatasetWriter


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_round_trip_exact_lowdim_and_psnr_video(tmp_path: Path, codec: str) -> None:
    lengths = (5, 8, 6)
    root = make_dataset(tmp_path / codec, lengths, codec=codec)
    ds = RobotDataset(root)
    assert (ds.meta.num_episodes, ds.meta.num_frames, len(ds)) == (3, 19, 19)
    assert ds.meta.tasks == ["task 0", "task 1"]
    worst = 1e9
    for ep, n in enumerate(lengths):
        e = ds.get_episode(ep)
        np.testing.assert_array_equal(e["observation.state"], np.stack([state_of(ep, t) for t in range(n)]))
        np.testing.assert_array_equal(e["action"], np.stack([action_of(ep, t) for t in range(n)]))
        assert e["next.success"].reshape(-1).tolist() == [t == n - 1 for t in range(n)]
        for t in range(n):
            worst = min(worst, psnr(e[CAM][t], smooth(ep, t)))
        assert e["task"] == f"task {ep % 2}"
    assert worst >= 35, f"{codec}: worst frame PSNR {worst:.1f} dB"
    # multi-episode files after finalize (the v3 layout), and the file metadata LeRobot's loader reads
    assert [p.name for p in (root / "videos" / CAM).rglob("*.mp4")] == ["file-000.mp4"]
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["videos/observation.images.cam/from_timestamp"] for r in rows] == pytest.approx([0.0, 0.5, 1.3])
    assert json.loads((root / "meta/info.json").read_text())["total_frames"] == 19


def _fixture(name: str) -> Path:
    root = FIXTURES / name
    if not root.exists():
        pytest.skip(f"LeRobot fixtures not found at {root} (they live in ../shared beside the repo)")
    return root


@pytest.mark.parametrize("name", ["example_av1", "example_h264"])
def test_reads_lerobot_written_fixture(name: str) -> None:
    ds = RobotDataset(_fixture(name), n_obs_steps=2, horizon=3)
    assert ds.meta.num_episodes == 3 and ds.meta.num_frames == 48 and ds.meta.fps == 15
    assert list(ds.meta.ep_len) == [12, 16, 20]
    assert ds.meta.tasks == ["pick up the red block", "stack the blocks"]
    table = pq.read_table(ds.root / "data/chunk-000/file-000.parquet")
    state = np.stack(table.column("observation.state").to_pylist()).astype(np.float32)
    errs = []
    for i in range(len(ds)):
        s = ds[i]
        ep = s["episode_index"]
        t = i - int(ds.meta.ep_from[ep])
        assert s["task"] == ("stack the blocks" if ep == 1 else "pick up the red block")
        img = s["observation.images.top"]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (2, 3, 72, 96)
        diff = np.abs(img[-1].permute(1, 2, 0).numpy().astype(int) - pattern(ep, t, 72, 96).astype(int))
        errs.append(np.median(diff))
        assert diff.mean() < 10, f"episode {ep} frame {t}: mean abs pixel error {diff.mean():.1f}"
        np.testing.assert_array_equal(s["observation.state"][-1].numpy(), state[i])
    assert np.mean(errs) < 4


def test_windows_pad_at_episode_edges(tiny: Path) -> None:
    ds = RobotDataset(tiny, n_obs_steps=3, horizon=4)
    first = ds[5]  # frame 0 of episode 1
    assert first["episode_index"] == 1 and first["obs_is_pad"].tolist() == [True, True, False]
    np.testing.assert_array_equal(first["observation.state"].numpy(), np.stack([state_of(1, 0)] * 3))
    assert torch.equal(first["observation.images.cam"][0], first["observation.images.cam"][2])
    last = ds[12]  # frame 7 (the last) of episode 1
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    np.testing.assert_array_equal(last["action"].numpy(), np.stack([action_of(1, 7)] * 4))
    mid = ds[8]  # frame 3 of episode 1
    assert not mid["obs_is_pad"].any() and not mid["action_is_pad"].any()
    np.testing.assert_array_equal(mid["observation.state"][:, 1].numpy(), [1, 2, 3])
    np.testing.assert_array_equal(mid["action"][:, 0].numpy(), [103, 104, 105, 106])
    # per-key offsets via delta timestamps (10 fps): every other frame of history, 2 actions
    dt = RobotDataset(tiny, delta_timestamps={"observation.state": [-0.4, -0.2, 0.0], "action": [0.0, 0.1]})
    s = dt[8]
    np.testing.assert_array_equal(s["observation.state"][:, 1].numpy(), [0, 1, 3])
    assert s["obs_is_pad"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="multiples of 1/fps"):
        RobotDataset(tiny, delta_timestamps={"action": [0.05]})


@pytest.mark.parametrize("state", [True, False])
def test_action_less_dataset_loads(tmp_path: Path, state: bool) -> None:
    root = make_variant(tmp_path / "video", action=False, state=state)
    ds = RobotDataset(root, n_obs_steps=2, horizon=4)
    assert (ds.meta.has_action, ds.meta.has_state, ds.meta.latent_dim, len(ds)) == (False, state, None, 19)
    assert ds.meta.contents() == f"actions: no (action-less), state: {'yes' if state else 'no'}"
    s = ds[5]  # frame 0 of episode 1: the observation window still pads at the episode start
    assert "action" not in s and "action_is_pad" not in s and ("observation.state" in s) == state
    assert s["obs_is_pad"].tolist() == [True, False] and s["task"] == "task 1"
    assert psnr(s[CAM][1].permute(1, 2, 0).numpy(), smooth(1, 0)) >= 35
    if state:
        np.testing.assert_array_equal(s["observation.state"].numpy(), np.stack([state_of(1, 0)] * 2))
    ep = ds.get_episode(2)
    assert ep[CAM].shape == (6, 32, 32, 3) and "action" not in ep


def test_latent_action_is_windowed_exactly_like_action(tmp_path: Path) -> None:
    root = make_variant(tmp_path / "lat", latent=True)
    ds = RobotDataset(root, n_obs_steps=2, horizon=4)
    assert ds.meta.latent_dim == 3 and "latent actions: yes (L=3)" in ds.meta.contents()
    for i in range(len(ds)):  # every frame, including each episode's last H-1 (clamped + padded)
        s = ds[i]
        assert s["latent_is_pad"].tolist() == s["action_is_pad"].tolist()
        assert torch.equal(s[LATENT][:, :2], s["action"]), i  # latent_of's first dims are action_of
        ep, frame = s["episode_index"], s["index"] - int(ds.meta.ep_from[s["episode_index"]])
        n = int(ds.meta.ep_len[ep])
        want = np.stack([latent_of(ep, min(frame + k, n - 1)) for k in range(4)])
        np.testing.assert_array_equal(s[LATENT].numpy(), want)
        assert s["latent_is_pad"].tolist() == [frame + k >= n for k in range(4)]


def test_dataloader_workers_and_unfinalized_dataset(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "raw", (4, 6), finalize=False)
    ds = RobotDataset(root, n_obs_steps=2, horizon=2)
    ds[0]  # opens a decoder in this process; workers must open their own
    # forkserver: this test process holds FFmpeg/SVT/dav1d threads from earlier tests, which fork() would copy mid-lock
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False, multiprocessing_context="forkserver")
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 10
    imgs = torch.cat([b["observation.images.cam"] for b in batches])
    assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (10, 2, 3, 32, 32)
    assert psnr(imgs[9, -1].permute(1, 2, 0).numpy(), smooth(1, 5)) >= 35


def test_writer_rejects_bad_frames(tmp_path: Path) -> None:
    w = DatasetWriter.create(tmp_path / "bad", FEATURES, fps=10)
    good = {CAM: smooth(0, 0), "observation.state": state_of(0, 0), "action": action_of(0, 0), "next.success": False}
    with pytest.raises(ValueError, match="missing features"):
        w.add_frame({k: v for k, v in good.items() if k != "action"}, task="t")
    with pytest.raises(ValueError, match="unknown features"):
        w.add_frame({**good, "extra": 1.0}, task="t")
    with pytest.raises(ValueError, match="NaN"):
        w.add_frame({**good, "action": np.array([np.nan, 0], np.float32)}, task="t")
    with pytest.raises(ValueError, match="field=observation.state: expected shape"):
        w.add_frame({**good, "observation.state": np.zeros(4, np.float32)}, task="t")
    with pytest.raises(ValueError, match="uint8"):
        w.add_frame({**good, CAM: smooth(0, 0).astype(np.float32)}, task="t")
    with pytest.raises(ValueError, match="no frames"):
        w.save_episode()
    with pytest.raises(FileExistsError):
        DatasetWriter.create(tmp_path / "bad", FEATURES, fps=10)
    w.add_frame(good, task="t")
    w.clear_episode()
    assert w.episode_length == 0 and w.num_episodes == 0


def test_resume_appends_after_finalize(tiny: Path) -> None:
    w = DatasetWriter.open(tiny)
    assert w.num_episodes == 3
    from data_helpers import write_episodes

    write_episodes(w, (7,), first_ep=3)
    w.finalize()
    ds = RobotDataset(tiny)
    assert ds.meta.num_episodes == 4 and ds.meta.num_frames == 26
    e = ds.get_episode(3)
    np.testing.assert_array_equal(e["action"][:, 0], 300 + np.arange(7))
    assert psnr(e[CAM][6], smooth(3, 6)) >= 35
    assert psnr(ds.get_episode(0)[CAM][0], smooth(0, 0)) >= 35


def test_finalize_of_a_finished_dataset_touches_no_file(tiny: Path) -> None:
    """Resuming a recording that had already finished must not re-join its (possibly huge) videos."""

    def media() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in tiny.rglob("*") if p.suffix in {".mp4", ".parquet"} and "stats" not in p.name}

    before = media()
    w = DatasetWriter.open(tiny)
    w.finalize()
    w.close()
    assert media() == before
    from data_helpers import write_episodes

    w = DatasetWriter.open(tiny)
    write_episodes(w, (5,), first_ep=3)
    w.finalize()  # a new episode: joined with the others again
    w.close()
    assert RobotDataset(tiny).meta.num_episodes == 4
    assert len(list(tiny.glob("videos/*/chunk-*/file-*.mp4"))) == len(list(tiny.glob("videos/*/chunk-000/file-000.mp4")))
