"""Mixtures: schema mapping, proportions, determinism, exact resume through workers, rank sharding."""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import CAM, LATENT, make_dataset, make_variant

from openlbm.data.collate import collate_batch
from openlbm.data.dataset import RobotDataset
from openlbm.data.mixture import DataConfig, MixtureSampler, SourceConfig, read_sources
from openlbm.data.writer import DatasetWriter
from openlbm.types import EmbodimentSpec, FeatureSpec


@pytest.fixture(scope="module")
def two_robots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``toy`` (camera 'cam' 32x32, state 3, action 2) and ``arm`` (camera 'wrist' 16x24, state 5, action 4)."""
    base = tmp_path_factory.mktemp("mix")
    a = make_dataset(base / "toy", (6, 4, 5))
    feats = {"observation.images.wrist": FeatureSpec("video", (16, 24, 3)),
             "observation.joints": FeatureSpec("float32", (5,)), "action": FeatureSpec("float32", (4,))}
    w = DatasetWriter.create(base / "arm", feats, fps=10, robot_type="arm")
    for ep, n in enumerate((8, 9)):
        for t in range(n):
            w.add_frame({"observation.images.wrist": np.full((16, 24, 3), 10 * t, np.uint8),
                         "observation.joints": np.full(5, t, np.float32), "action": np.full(4, ep, np.float32)}, task="reach")
        w.save_episode()
    w.finalize()
    return a, base / "arm"


def _cfg(two_robots: tuple[Path, Path], **kw: object) -> DataConfig:
    toy, arm = two_robots
    return DataConfig(sources=(SourceConfig(toy, weight=1.0),
                               SourceConfig(arm, weight=3.0, rename={"wrist": "cam", "observation.joints": "observation.state"})), **kw)


EMBS = [EmbodimentSpec("toy", ("cam",), (32, 32), 3, 2), EmbodimentSpec("arm", ("cam",), (32, 32), 5, 4)]


def test_mapping_padding_masks_and_stats(two_robots: tuple[Path, Path]) -> None:
    data = _cfg(two_robots, num_workers=0).build(EMBS, n_obs_steps=2, horizon=3, batch_size=4, seed=0)
    assert (data.max_state_dim, data.max_action_dim) == (5, 4)
    toy = data.dataset[0]
    arm = data.dataset[len(data.dataset) - 1]
    assert toy["embodiment"] == "toy" and arm["embodiment"] == "arm"
    assert tuple(arm[CAM].shape) == (2, 3, 32, 32) and arm[CAM].dtype == torch.uint8  # resized 16x24 -> 32x32
    assert toy["action_dim_mask"].tolist() == [True, True, False, False]
    assert torch.all(toy["action"][:, 2:] == 0) and torch.all(toy["observation.state"][:, 3:] == 0)
    assert arm["observation.state"][-1].tolist() == [8.0] * 5 and arm["action_dim_mask"].all()
    batch = collate_batch([toy, arm])
    batch.validate()
    assert batch.obs.images["cam"].shape == (2, 2, 3, 32, 32) and batch.obs.embodiment == ["toy", "arm"]
    assert batch.obs.instruction[1] == "reach" and batch.meta["dataset"].tolist() == [0, 1]
    assert set(data.stats) == {"toy", "arm"}
    assert len(data.stats["arm"]["observation.state"]["mean"]) == 5
    assert np.asarray(data.stats["arm"][CAM]["mean"]).shape == (3, 1, 1)
    # inferred embodiments: one per dataset, named by robot_type
    inferred = _cfg(two_robots, num_workers=0).build(None, 1, 1, 2, 0)
    assert [e.name for e in inferred.embodiments] == ["toy", "arm"]
    assert inferred.embodiments[1].image_size == (16, 24)


def test_bad_mapping_is_a_clear_error(two_robots: tuple[Path, Path]) -> None:
    toy, arm = two_robots
    with pytest.raises(ValueError, match="needs camera 'cam'"):
        DataConfig(sources=(SourceConfig(arm, embodiment="toy"),)).build(EMBS, 1, 1, 2, 0)
    with pytest.raises(ValueError, match="state has 3 dims"):
        DataConfig(sources=(SourceConfig(toy, embodiment="arm"),)).build(EMBS, 1, 1, 2, 0)
    with pytest.raises(ValueError, match="sources is empty"):
        DataConfig().build(EMBS, 1, 1, 2, 0)


def test_mixture_file_and_image_size(two_robots: tuple[Path, Path], tmp_path: Path) -> None:
    toy, arm = two_robots
    mix = tmp_path / "mix.json"
    rel = os.path.relpath(arm, tmp_path)  # relative to the file's folder, not to the working directory
    mix.write_text(json.dumps([{"root": rel, "weight": 2, "rename": {"wrist": "front"}, "image_size": [8, 12]}]))
    (src,) = read_sources(mix)
    assert src.root.resolve() == arm.resolve() and src.weight == 2.0 and src.image_size == (8, 12)
    data = DataConfig(sources=(src,), num_workers=0).build(None, 1, 1, 2, 0)
    assert data.embodiments[0].image_size == (8, 12) and data.embodiments[0].cameras == ("front",)
    assert tuple(data.dataset[0]["observation.images.front"].shape) == (1, 3, 8, 12)  # resized 16x24 -> 8x12
    with pytest.raises(ValueError, match="image_size \\(8, 12\\) differs from embodiment 'toy'"):
        DataConfig(sources=(SourceConfig(toy, image_size=(8, 12)),)).build(EMBS, 1, 1, 2, 0)
    for entry, msg in (({"root": "a", "weight": "x"}, "mix.json\\[0\\].weight: expected a number"),
                       ({"root": "a", "image_size": [0, 4]}, "image_size must be"), ({"weight": 1}, "missing config keys"),
                       ({"root": "a", "rename": ["x"]}, "rename must map"), ({"root": "a", "rename": {"x": 1}}, "rename maps")):
        mix.write_text(json.dumps([entry]))
        with pytest.raises(ValueError, match=msg):
            read_sources(mix)


def test_proportions_follow_weights_within_a_statistical_bound() -> None:
    sizes, weights = [50, 500, 5], [1.0, 1.0, 2.0]
    s = MixtureSampler(sizes, weights, seed=3, epoch_size=20000)
    idx = np.fromiter(islice(iter(s), 20000), dtype=np.int64)
    src = np.searchsorted(np.cumsum(sizes), idx, side="right")
    p = np.array(weights) / sum(weights)
    counts = np.bincount(src, minlength=3)
    sigma = np.sqrt(len(idx) * p * (1 - p))
    assert np.all(np.abs(counts - len(idx) * p) < 5 * sigma), counts
    # within a source, frames are drawn without replacement: a 50-frame source cycles through all its frames
    small = idx[src == 0][:50]
    assert sorted(small.tolist()) == list(range(50))
    scaled = MixtureSampler(sizes, [w * n for w, n in zip(weights, sizes, strict=True)], seed=3, epoch_size=5000)
    src2 = np.searchsorted(np.cumsum(sizes), np.fromiter(islice(iter(scaled), 5000), dtype=np.int64), side="right")
    assert abs(np.mean(src2 == 1) - 500 / 560) < 0.03


def test_same_seed_same_stream_and_ranks_are_disjoint() -> None:
    a = list(islice(iter(MixtureSampler([30, 40], [1, 1], seed=7)), 140))
    b = list(islice(iter(MixtureSampler([30, 40], [1, 1], seed=7)), 140))
    c = list(islice(iter(MixtureSampler([30, 40], [1, 1], seed=8)), 140))
    assert a == b and a != c
    world = 3
    shards = [MixtureSampler([30, 40], [1, 1], seed=7, rank=r, world_size=world) for r in range(world)]
    per_rank = shards[0].per_rank
    epochs = [s.epoch_indices(0) for s in shards]
    assert all(len(e) == per_rank == 70 // world for e in epochs)
    full = MixtureSampler([30, 40], [1, 1], seed=7).epoch_indices(0)
    for r in range(world):  # each rank holds its own positions of the one global stream
        np.testing.assert_array_equal(epochs[r], full[r::world][:per_rank])
    positions = [set(range(r, 70, world)) for r in range(world)]
    assert all(not (positions[i] & positions[j]) for i in range(world) for j in range(i + 1, world))


def test_resume_mid_epoch_through_worker_loader(two_robots: tuple[Path, Path]) -> None:
    cfg = _cfg(two_robots, num_workers=2, prefetch_factor=2)
    ref = cfg.build(EMBS, 2, 3, batch_size=4, seed=11)
    it = iter(ref.loader())
    uninterrupted = [next(it).meta["index"].tolist() for _ in range(14)]  # > 1 epoch of 32 samples
    first = cfg.build(EMBS, 2, 3, batch_size=4, seed=11)
    it = iter(first.loader())
    got = [next(it).meta["index"].tolist() for _ in range(5)]
    state = first.sampler.state_dict()
    assert state["consumed"] == 20  # batches taken by the consumer, not those prefetched by the workers
    resumed = cfg.build(EMBS, 2, 3, batch_size=4, seed=11)
    resumed.sampler.load_state_dict(state)
    it = iter(resumed.loader())
    got += [next(it).meta["index"].tolist() for _ in range(9)]
    assert got == uninterrupted
    with pytest.raises(ValueError, match="seed"):
        cfg.build(EMBS, 2, 3, batch_size=4, seed=12).sampler.load_state_dict(state)


def _joint_dataset(root: Path, robot: str, lengths: tuple[int, ...], state: np.ndarray, shade: int) -> Path:
    feats = {"observation.images.cam": FeatureSpec("video", (16, 16, 3)), "observation.state": FeatureSpec("float32", (2,)),
             "action": FeatureSpec("float32", (2,))}
    w = DatasetWriter.create(root, feats, fps=10, robot_type=robot)
    t0 = 0
    for n in lengths:
        for t in range(n):
            s = state[t0 + t]
            img = np.clip(shade + 3 * np.arange(16)[:, None, None] + t + np.zeros((16, 16, 3)), 0, 255).astype(np.uint8)
            w.add_frame({"observation.images.cam": img, "observation.state": s, "action": -2 * s}, task="reach")
        w.save_episode()
        t0 += n
    w.finalize()
    return root


def test_merged_stats_are_exact_where_averaging_is_badly_wrong(tmp_path: Path) -> None:
    """300 frames in [0, 1] and 30 frames near 40: the union's q99 lies in the small dataset (~40); the old
    count-weighted mean of the datasets' q99 gives ~4.6 (the bug users of other tools hit: 13.6 vs 39.3)."""
    from openlbm.data.dataset import RobotDataset
    from openlbm.data.stats import IMAGE_FRAMES_PER_EPISODE, QUANTILES, image_frame_indices

    rng = np.random.default_rng(0)
    big = _joint_dataset(tmp_path / "big", "a", (100, 120, 80), rng.random((300, 2)).astype(np.float32), shade=10)
    small = _joint_dataset(tmp_path / "small", "b", (30,), (40 + rng.normal(0, 0.5, (30, 2))).astype(np.float32), shade=200)
    emb = EmbodimentSpec("joint", ("cam",), (16, 16), 2, 2)
    data = DataConfig(sources=(SourceConfig(big, embodiment="joint"), SourceConfig(small, embodiment="joint")),
                      num_workers=0).build([emb], 1, 1, batch_size=2, seed=0)
    merged = data.stats["joint"]
    eps = [RobotDataset(r).get_episode(e) for r, n in ((big, 3), (small, 1)) for e in range(n)]
    for key in ("observation.state", "action"):
        x = np.concatenate([e[key] for e in eps]).astype(np.float64)  # [330, 2]
        for name, q in QUANTILES.items():
            np.testing.assert_array_equal(merged[key][name], np.quantile(x, q, axis=0), err_msg=f"{key} {name}")
        np.testing.assert_allclose(merged[key]["mean"], x.mean(0), rtol=1e-10)
        np.testing.assert_allclose(merged[key]["std"], x.std(0), rtol=1e-10)
        assert merged[key]["count"] == [330]
    true_q99 = np.quantile(np.concatenate([e["observation.state"] for e in eps]).astype(np.float64), 0.99, axis=0)
    own = [json.loads((r / "meta/stats.json").read_text())["observation.state"] for r in (big, small)]
    averaged = (300 * np.asarray(own[0]["q99"]) + 30 * np.asarray(own[1]["q99"])) / 330
    assert np.all(true_q99 > 39) and np.all(np.abs(averaged - true_q99) > 30)  # what averaging would have given
    # camera: every pixel of the stated frame sample of every episode of both datasets
    pixels = np.concatenate([e[CAM][image_frame_indices(len(e[CAM]), IMAGE_FRAMES_PER_EPISODE)] for e in eps])
    px = pixels.reshape(-1, 3) / 255.0  # [M, 3]
    for name, q in QUANTILES.items():
        np.testing.assert_array_equal(np.asarray(merged[CAM][name]).reshape(3), np.quantile(px, q, axis=0), err_msg=name)
    assert merged[CAM]["count"] == [330]


@pytest.fixture(scope="module")
def no_actions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 3 episodes as labelled demos, as action-less video with state, as bare video (robot ``bare``), and
    action-less with a ``latent_action`` label."""
    base = tmp_path_factory.mktemp("nodata")
    return {"demos": make_variant(base / "demos"), "video": make_variant(base / "video", action=False),
            "bare": make_variant(base / "bare", action=False, state=False, robot_type="bare"),
            "latent": make_variant(base / "latent", action=False, latent=True)}


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k


def test_action_less_rows_are_all_pad_and_labelled_rows_unchanged(no_actions: dict[str, Path]) -> None:
    demos, video = no_actions["demos"], no_actions["video"]
    alone = DataConfig(sources=(SourceConfig(demos),), num_workers=0).build(None, 2, 4, batch_size=4, seed=0)
    mixed = DataConfig(sources=(SourceConfig(demos), SourceConfig(video)), num_workers=0).build(None, 2, 4, 4, 0)
    assert mixed.embodiments == alone.embodiments and mixed.embodiments[0].action_dim == 2
    n = len(alone.dataset)
    for i in range(n):  # labelled rows: exactly what the labelled dataset gives alone
        _same(alone.dataset[i], mixed.dataset[i])
    for i in range(n, len(mixed.dataset)):  # action-less rows: zero actions, every step padding, real observations
        s, ref = mixed.dataset[i], alone.dataset[i - n]
        assert s["action_is_pad"].tolist() == [True] * 4 and not s["action"].any() and s["action"].shape == (4, 2)
        assert s["action_dim_mask"].tolist() == [True, True] and s["dataset"] == 1
        for k in ("observation.state", "obs_is_pad", CAM):
            assert torch.equal(s[k], ref[k]), k
    # action stats come from the labelled source only; state stats cover both
    assert mixed.stats["toy"]["action"] == alone.stats["toy"]["action"]
    assert mixed.stats["toy"]["observation.state"]["count"] == [2 * n]
    batch = collate_batch([mixed.dataset[0], mixed.dataset[n]])
    batch.validate()
    assert batch.action_is_pad[1].all() and not batch.action_is_pad[0].all() and batch.latent_action is None
    # the action-less source listed first still gets the embodiment's action dim from the labelled one
    first = DataConfig(sources=(SourceConfig(video), SourceConfig(demos)), num_workers=0).build(None, 1, 2, 2, 0)
    assert first.embodiments[0].action_dim == 2 and first.stats["toy"]["action"] == alone.stats["toy"]["action"]
    for b in islice(iter(first.loader()), 3):
        b.validate()


def test_state_less_video_needs_a_state_less_embodiment(no_actions: dict[str, Path]) -> None:
    demos, bare = no_actions["demos"], no_actions["bare"]
    data = DataConfig(sources=(SourceConfig(demos), SourceConfig(bare)), num_workers=0).build(None, 2, 4, 4, 0)
    toy, video = data.embodiments
    assert (video.name, video.state_dim, video.action_dim) == ("bare", 0, 0)
    assert sorted(data.stats["bare"]) == [CAM] and "action" in data.stats["toy"]
    s = data.dataset[len(data.dataset) - 1]
    assert s["embodiment"] == "bare" and s["observation.state"].shape == (2, 3) and not s["observation.state"].any()
    assert s["action_is_pad"].all() and not s["action_dim_mask"].any()
    collate_batch([data.dataset[0], s]).validate()
    with pytest.raises(ValueError, match="has no observation.state but embodiment 'toy' has state_dim 3"):
        DataConfig(sources=(SourceConfig(bare, embodiment="toy"),)).build(EMBS, 1, 1, 2, 0)
    with pytest.raises(ValueError, match="disagree.*has no observation.state"):
        DataConfig(sources=(SourceConfig(demos), SourceConfig(bare, embodiment="toy"))).build(None, 1, 1, 2, 0)


def test_latent_action_rows_follow_the_contract(no_actions: dict[str, Path]) -> None:
    demos, latent = no_actions["demos"], no_actions["latent"]
    data = DataConfig(sources=(SourceConfig(demos), SourceConfig(latent)), num_workers=0).build(None, 2, 4, 4, 0)
    assert data.latent_dim == 3
    n, raw = len(RobotDataset(demos)), RobotDataset(latent, n_obs_steps=2, horizon=4)
    for i in (0, 4, 12):  # demos rows: no latent label -> zeros, all padding; the action is untouched
        s = data.dataset[i]
        assert s[LATENT].shape == (4, 3) and not s[LATENT].any() and s["latent_is_pad"].all()
        assert not s["action_is_pad"].all()
    for i in (0, 4, 12, 18):  # labelled rows: the dataset's own latent window (18 = last frame: 3 padded steps)
        s = data.dataset[n + i]
        assert torch.equal(s[LATENT], raw[i][LATENT]) and torch.equal(s["latent_is_pad"], raw[i]["latent_is_pad"])
        assert s["action_is_pad"].all()
    assert data.dataset[n + 18]["latent_is_pad"].tolist() == [False, True, True, True]
    batch = next(iter(data.loader(num_workers=0)))
    batch.validate()
    assert batch.latent_action.shape == (4, 4, 3) and batch.latent_is_pad.shape == (4, 4)
    # a renamed feature is windowed like the action it was (here the demos' action, L = 2)
    renamed = DataConfig(sources=(SourceConfig(demos, rename={"action": LATENT}),), num_workers=0).build(None, 1, 4, 2, 0)
    plain = RobotDataset(demos, horizon=4)
    for i in (3, 4, 18):
        s = renamed.dataset[i]
        assert torch.equal(s[LATENT], plain[i]["action"]) and torch.equal(s["latent_is_pad"], plain[i]["action_is_pad"])
    # every source with the feature must agree on L; without it batches carry none
    with pytest.raises(ValueError, match="disagree on the latent_action dim"):
        DataConfig(sources=(SourceConfig(demos, rename={"action": LATENT}), SourceConfig(latent))).build(None, 1, 1, 2, 0)
    plain_mix = DataConfig(sources=(SourceConfig(demos),), num_workers=0).build(None, 1, 1, 2, 0)
    assert plain_mix.latent_dim is None and LATENT not in plain_mix.dataset[0]
