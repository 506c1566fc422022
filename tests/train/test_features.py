"""Feature caches for frozen vision backbones: cached and live training give the same loss on the same batch; a cache
is reused, never read for another dataset or encoder, and a crashed build leaves nothing that is read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from openlbm.configs.presets import debug, small_vision
from openlbm.data.features import CACHE_FILE, FeatureCache, dataset_fingerprint
from openlbm.train.features import attach_feature_caches, encoder_fingerprint
from openlbm.train.loop import build_policy, sample_seeds, train
from openlbm.train_command import with_datasets


def frozen_cfg(dataset: Path, run_dir: Path):  # noqa: ANN201
    cfg = debug()
    policy = replace(cfg.policy, vision=replace(small_vision(), num_keypoints=8, neck_width=16, group_size=4))
    return with_datasets(replace(cfg, policy=policy, run_dir=run_dir, feature_cache=run_dir / "cache"), (dataset,))


def frozen_setup(dataset_factory, tmp_path: Path):  # noqa: ANN001, ANN201
    """A 2-episode dataset, the frozen-encoder config, its mixture and a policy built on it."""
    root = dataset_factory(tmp_path / "d", episodes=2, frames=8, size=32)
    cfg = frozen_cfg(root, tmp_path / "run")
    data = cfg.data.build(None, n_obs_steps=2, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    return root, cfg, data, build_policy(cfg, data, torch.device("cpu"))


def first_batch(cfg, policy, cached: bool):  # noqa: ANN001, ANN201
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=6, seed=3)
    if cached:
        attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    batch = next(iter(data.loader(num_workers=0)))
    batch.meta["sample_seed"] = sample_seeds(cfg.seed, data.sampler.consumed, batch.batch_size, 0, 1)
    return batch


def randomize(module: torch.nn.Module) -> None:
    """Give the zero-initialised output projections weights, so the loss depends on every input."""
    g = torch.Generator().manual_seed(0)
    for out in module.model.action_out.values():
        out.weight.data = torch.randn(out.weight.shape, generator=g) * 0.1


def test_cached_and_live_features_give_the_same_loss(dataset_factory, tmp_path: Path) -> None:  # noqa: ANN001
    data_root = dataset_factory(tmp_path / "d", episodes=3, frames=10, size=32, cameras=("corner2", "wrist"))
    cfg = frozen_cfg(data_root, tmp_path / "run")
    torch.manual_seed(0)
    data0 = cfg.data.build(None, n_obs_steps=2, horizon=cfg.policy.horizon, batch_size=6, seed=3)
    policy = build_policy(cfg, data0, torch.device("cpu"))
    randomize(policy)
    live, cached = first_batch(cfg, policy, cached=False), first_batch(cfg, policy, cached=True)
    assert cached.obs.features is not None and set(cached.obs.features) == {"corner2", "wrist"}
    assert cached.obs.images == {} and live.obs.features is None
    assert cached.obs.features["corner2"].shape == (6, 2, 40, 4, 4)  # 32 px: the block-5 map is 4x4
    assert torch.equal(cached.meta["index"], live.meta["index"])
    policy.train()
    loss_live = policy.compute_loss(live)[0]["action"]
    loss_cached = policy.compute_loss(cached)[0]["action"]
    # The same computation, but not always bit for bit: the cache runs the backbone over whole episodes, the live
    # path over this batch, and on one CPU thread the convolutions then round differently, which can flip a
    # float16 rounding of the features (measured: 2e-3 on one feature, 7e-7 on the pooled token).
    torch.testing.assert_close(loss_live, loss_cached, rtol=1e-5, atol=0)
    # the loss does depend on the features: other (zeroed) maps change it
    zeroed = {k: torch.zeros_like(v) for k, v in cached.obs.features.items()}
    cached.obs.features = zeroed
    assert not torch.allclose(policy.compute_loss(cached)[0]["action"], loss_cached)


def test_cache_is_reused_and_keyed_by_dataset_and_encoder(dataset_factory, tmp_path: Path) -> None:  # noqa: ANN001
    root, cfg, data, policy = frozen_setup(dataset_factory, tmp_path)
    (first,) = attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    info = json.loads((first / CACHE_FILE).read_text())
    assert info["num_frames"] == 16 and info["dataset"]["fingerprint"] == dataset_fingerprint(root)
    stamp = (first / CACHE_FILE).stat().st_mtime_ns
    (again,) = attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    assert again == first and (first / CACHE_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt
    # other encoder weights -> another cache; opening the first with them is refused
    other = build_policy(cfg, data, torch.device("cpu"))
    with torch.no_grad():
        other.model.vision.backbone._conv_stem.weight.mul_(1.5)
    assert encoder_fingerprint(other.model.vision) != encoder_fingerprint(policy.model.vision)
    with pytest.raises(ValueError, match="other encoder weights"):
        FeatureCache.open(first, dataset_fingerprint(root), encoder_fingerprint(other.model.vision))
    (second,) = attach_feature_caches(data, other.model.vision, cfg.feature_cache)
    assert second != first
    # a dataset re-recorded in place (here: one more episode) -> another fingerprint, another cache
    import shutil

    shutil.rmtree(root)
    dataset_factory(root, episodes=3, frames=8, size=32)
    with pytest.raises(ValueError, match="dataset changed since"):
        FeatureCache.open(first, dataset_fingerprint(root), encoder_fingerprint(policy.model.vision))
    data = cfg.data.build(None, n_obs_steps=2, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    (third,) = attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    assert third not in (first, second)
    assert json.loads((third / CACHE_FILE).read_text())["num_frames"] == 24


def test_a_crashed_build_is_cleared_and_rebuilt(dataset_factory, tmp_path: Path) -> None:  # noqa: ANN001
    root, cfg, data, policy = frozen_setup(dataset_factory, tmp_path)
    (path,) = attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    good = FeatureCache.open(path, dataset_fingerprint(root), encoder_fingerprint(policy.model.vision))
    ref = good.rows("observation.images.corner2", torch.arange(16).numpy())
    # simulate a kill mid-build: the finished folder is gone, a half-written .partial sibling is left
    partial = path.with_name(path.name + ".partial")
    path.rename(partial)
    (partial / CACHE_FILE).unlink()
    with open(partial / "corner2.npy", "r+b") as f:
        f.truncate(100)
    data = cfg.data.build(None, n_obs_steps=2, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    (rebuilt,) = attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    assert rebuilt == path and not partial.exists()
    again = FeatureCache.open(path, dataset_fingerprint(root), encoder_fingerprint(policy.model.vision))
    assert (again.rows("observation.images.corner2", torch.arange(16).numpy()) == ref).all()


def test_train_on_cached_features_end_to_end(dataset_factory, tmp_path: Path) -> None:  # noqa: ANN001
    root = dataset_factory(tmp_path / "d", episodes=3, frames=10, size=32)
    cfg = replace(frozen_cfg(root, tmp_path / "run"), feature_cache=None, steps=3)
    train(cfg)
    caches = [p for p in (tmp_path / "run" / "features").iterdir() if (p / CACHE_FILE).is_file()]
    assert len(caches) == 1
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and all(r["loss"] == r["loss"] for r in rows)


def test_lbm_data_embed_builds_the_cache_training_then_reads(dataset_factory, tmp_path: Path) -> None:  # noqa: ANN001
    from openlbm.cli import main

    root = dataset_factory(tmp_path / "d", episodes=2, frames=8, size=32)
    assert main(["data", "embed", "--dataset", str(root), "--cache", str(tmp_path / "cache"), "--preset", "small"]) == 0
    (built,) = [p for p in (tmp_path / "cache").iterdir() if (p / CACHE_FILE).is_file()]
    stamp = (built / CACHE_FILE).stat().st_mtime_ns
    cfg = frozen_cfg(root, tmp_path / "run")  # the small preset's encoder; only pooling sizes differ
    cfg = replace(cfg, feature_cache=tmp_path / "cache")
    data = cfg.data.build(None, n_obs_steps=2, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    policy = build_policy(cfg, data, torch.device("cpu"))
    assert attach_feature_caches(data, policy.model.vision, cfg.feature_cache) == [built]
    assert (built / CACHE_FILE).stat().st_mtime_ns == stamp
    assert main(["data", "embed", "--dataset", str(root), "--cache", str(tmp_path / "cache"), "--preset", "debug"]) == 2  # not frozen
