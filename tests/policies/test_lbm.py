"""LBMPolicy: shapes, masks, overfitting, save/load, errors, multi-embodiment, init_from, param groups."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from policy_helpers import ARM, ROVER, action_loss, make_batch, make_obs, make_stats, randomize_zero_init

from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.config import PolicyConfig
from openlbm.policies.lbm import LBMPolicy
from openlbm.policies.normalize import MissingStatsError


def seeded(batch, seed: int = 0):
    batch.meta["sample_seed"] = torch.arange(batch.batch_size) + seed
    return batch


def test_shapes_and_debug_size(debug_policy: LBMPolicy) -> None:
    h = debug_policy.config.horizon
    loss, metrics = action_loss(debug_policy, make_batch([ARM] * 3, h))
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 < metrics["valid_frac"] <= 1
    loss.backward()
    chunk = debug_policy.eval().predict_chunk(make_obs([ARM] * 3))
    assert chunk.shape == (3, h, ARM.action_dim) and chunk.dtype == torch.float32
    assert sum(p.numel() for p in debug_policy.parameters()) < 500_000


def test_padded_dims_and_steps_do_not_affect_loss(debug_policy: LBMPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss sums the head's error over real steps and dims only. (Padded values still enter the denoiser as
    part of the noisy chunk, as in LeRobot's diffusion policy, so with a non-degenerate model changing *them* may
    change the error elsewhere: the test therefore poisons the error at padded positions directly.)"""
    h = debug_policy.config.horizon
    base = seeded(make_batch([ARM] * 2, h))
    base.action_is_pad[:, h // 2 :] = True
    base.action_dim_mask[:, 2] = False
    loss0, _ = action_loss(debug_policy, base)
    inner = debug_policy.model.loss

    def poisoned(*args: object, at: tuple = (slice(None), slice(h // 2, None))) -> torch.Tensor:
        err = inner(*args).clone()  # [B, H, A]
        err[at] += 1e6
        err[:, :, 2] += 1e6
        return err

    monkeypatch.setattr(debug_policy.model, "loss", poisoned)
    loss1, _ = action_loss(debug_policy, base)
    assert torch.equal(loss0, loss1)
    monkeypatch.setattr(debug_policy.model, "loss", lambda *a: poisoned(*a, at=(slice(None), 0, 0)))
    loss2, _ = action_loss(debug_policy, base)  # a real element does count
    assert not torch.equal(loss0, loss2)


def test_sample_seeds_make_loss_independent_of_batch_split(debug_policy: LBMPolicy) -> None:
    h = debug_policy.config.horizon
    full = seeded(make_batch([ARM] * 4, h))
    halves = []
    for sl in (slice(0, 2), slice(2, 4)):
        part = make_batch([ARM] * 4, h)
        part.obs.images = {k: v[sl] for k, v in part.obs.images.items()}
        part.obs.state, part.obs.instruction = part.obs.state[sl], part.obs.instruction[sl]
        part.obs.embodiment = part.obs.embodiment[sl]
        part.action, part.action_is_pad, part.action_dim_mask = part.action[sl], part.action_is_pad[sl], part.action_dim_mask[sl]
        part.meta["sample_seed"] = full.meta["sample_seed"][sl]
        halves.append(action_loss(debug_policy, part)[0])
    assert action_loss(debug_policy, full)[0].item() == pytest.approx(((halves[0] + halves[1]) / 2).item(), rel=1e-5)


def overfit(head: str, n_samples: int, steps: int, lr: float) -> tuple[float, float, float]:
    """Train the debug policy on one fixed batch: (loss before, loss after, mean |sampled - true| action).

    The diffusion head predicts the clean sample here: epsilon-prediction needs ~3x the steps to sample this
    precisely; the 1-D toy in tests/models/test_heads.py covers epsilon-prediction DDIM."""
    torch.manual_seed(0)
    cfg = replace(preset("debug"), head=head)
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, prediction="sample"))
    policy = cfg.build([ARM], {"arm": make_stats(ARM)})
    batch = make_batch([ARM] * n_samples, cfg.horizon)
    batch.obs.instruction = ["push the block", "open the drawer", "close the window"][:n_samples]
    opt = torch.optim.AdamW(policy.param_groups(0.0), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def eval_loss() -> float:  # fixed noise draws, so the curve is comparable across steps
        return sum(action_loss(policy, seeded(batch, 1000 + 2 * k))[0].item() for k in range(4)) / 4

    start = eval_loss()
    for step in range(steps):
        loss, _ = action_loss(policy, seeded(batch, 2 * step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    end = eval_loss()
    policy.eval()
    pred = policy.predict_chunk(batch.obs, num_steps=10, generator=torch.Generator().manual_seed(0))
    return start, end, (pred - batch.action).abs().mean().item()  # actions are uniform in [-1, 1]: zeros score 0.5


@pytest.mark.parametrize(
    ("head", "n_samples", "steps", "max_ratio"),
    # Quick versions (~2 s each). Two different observations make diffusion prove it conditions on them; flow
    # needs ~600 steps to tell two apart (the slow test), so its quick run overfits one sample.
    [("flow", 1, 300, 0.1), ("diffusion", 2, 200, 0.2)],
)
def test_overfits_tiny_batch(head: str, n_samples: int, steps: int, max_ratio: float) -> None:
    """Loss falls to a small fraction and sampled chunks reproduce the batch's actions."""
    start, end, err = overfit(head, n_samples, steps, lr=5e-3)
    assert end < max_ratio * start, (start, end)
    assert err < 0.2, err


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flow", "diffusion"])
def test_overfits_tiny_batch_thorough(head: str) -> None:
    start, end, err = overfit(head, n_samples=2, steps=600, lr=3e-3)
    assert end < 0.2 * start, (start, end)
    assert err < 0.15, err


def test_save_load_round_trip_identical_actions(debug_policy: LBMPolicy, tmp_path: Path) -> None:
    debug_policy.eval().save(tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"config.json", "model.safetensors", "stats.json"}
    loaded = LBMPolicy.load(tmp_path / "p").eval()
    assert loaded.config == debug_policy.config and loaded.embodiments == debug_policy.embodiments
    obs = make_obs([ARM] * 2)
    a = debug_policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(debug_policy.predict_chunk(obs), loaded.predict_chunk(obs))  # the seeded sampler too
    # Weights matter (a dropped or re-initialised tensor would show): another init answers differently.
    torch.manual_seed(1)
    other = randomize_zero_init(preset("debug").build([ARM], {"arm": make_stats(ARM)}), seed=1).eval()
    assert not torch.allclose(other.predict_chunk(obs, generator=torch.Generator().manual_seed(3)), a, atol=1e-2)


def test_fixture_policy_is_not_degenerate(debug_policy: LBMPolicy) -> None:
    """The chunk depends on the observation (zero-init output layers are randomised in the fixture)."""
    policy = debug_policy.eval()
    a = policy.predict_chunk(make_obs([ARM], seed=1), generator=torch.Generator().manual_seed(0))
    b = policy.predict_chunk(make_obs([ARM], seed=2), generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-2


def test_load_from_other_config_lists_mismatches(debug_policy: LBMPolicy, tmp_path: Path) -> None:
    debug_policy.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    meta["policy"]["trunk"]["dim"] = 48
    meta["policy"]["trunk"]["heads"] = 4
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"\d+ shape mismatches .*model\.action_in\.arm\.bias: config \(48,\) vs file \(32,\)"):
        LBMPolicy.load(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="stats.json missing"):
        (tmp_path / "p" / "stats.json").unlink()
        LBMPolicy.load(tmp_path / "p")


def test_config_dict_round_trip_and_unknown_keys() -> None:
    for name in ("debug", "small", "base", "large"):
        cfg = preset(name)
        assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown config keys.*'depht'"):
        PolicyConfig.from_dict({"trunk": {"depht": 3}})


def test_missing_stats_errors() -> None:
    with pytest.raises(MissingStatsError, match="no normalization stats for embodiment.*'arm'"):
        preset("debug").build([ARM], {"other": make_stats(ARM)})
    stats = make_stats(ARM)
    del stats["action"]["q01"]
    with pytest.raises(MissingStatsError, match=r"lacks \['q01'\]"):
        preset("debug").build([ARM], {"arm": stats})


def test_bad_inputs_give_clear_errors(debug_policy: LBMPolicy) -> None:
    obs = make_obs([ARM])
    obs.embodiment = ["nobody"]
    with pytest.raises(ValueError, match="'nobody'.*unknown"):
        debug_policy.predict_chunk(obs)
    small = make_obs([ROVER])
    small.embodiment = ["arm"]
    small.state = torch.zeros(1, 2, ARM.state_dim)
    with pytest.raises(ValueError, match="lacks camera 'front'"):
        debug_policy.predict_chunk(small)
    obs = make_obs([ARM])
    obs.images = {k: v[..., :16, :16].contiguous() for k, v in obs.images.items()}
    with pytest.raises(ValueError, match="16x16 but embodiment 'arm' expects 32x32"):
        debug_policy.predict_chunk(obs)
    with pytest.raises(ValueError, match="T=3 steps, policy expects n_obs_steps=2"):
        debug_policy.predict_chunk(make_obs([ARM], t=3))
    batch = make_batch([ARM], debug_policy.config.horizon)
    batch.action = batch.action.double()
    with pytest.raises(ValueError, match="action must be float32"):
        action_loss(debug_policy, batch)


def test_multi_embodiment_batch_and_init_from(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = preset("debug")
    both = cfg.build([ARM, ROVER], {"arm": make_stats(ARM), "rover": make_stats(ROVER)})
    batch = make_batch([ARM, ROVER, ARM], cfg.horizon)
    loss, _ = action_loss(both, batch)
    loss.backward()
    assert both.model.action_out["rover"].weight.grad.abs().sum() > 0
    chunk = both.eval().predict_chunk(batch.obs)
    assert chunk.shape == (3, cfg.horizon, 3)
    assert torch.all(chunk[1, :, 2] == 0)  # rover has 2 action dims: the third is padding

    arm_only = cfg.build([ARM], {"arm": make_stats(ARM)})
    arm_only.save(tmp_path / "arm")
    fresh = cfg.build([ARM, ROVER], {"arm": make_stats(ARM), "rover": make_stats(ROVER)})
    report = fresh.init_from(tmp_path / "arm")
    assert report.new and all(".rover" in k for k in report.new)
    assert torch.equal(fresh.model.trunk.action_pos, arm_only.model.trunk.action_pos)

    wide = replace(cfg, trunk=replace(cfg.trunk, mlp_ratio=3.0)).build([ARM], {"arm": make_stats(ARM)})
    with pytest.raises(ValueError, match=r"shape mismatches .*mlp"):
        wide.init_from(tmp_path / "arm")


def test_param_groups_cover_everything_once(debug_policy: LBMPolicy) -> None:
    groups = debug_policy.param_groups(weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in debug_policy.parameters() if p.requires_grad)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(debug_policy.named_parameters())
    assert by_id[id(named["model.trunk.blocks.0.attn.qkv.bias"])]["weight_decay"] == 0.0
    assert by_id[id(named["model.trunk.action_pos"])]["weight_decay"] == 0.0
    assert by_id[id(named["model.trunk.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.1
    assert all(g["lr_mult"] == 1.0 for g in groups)  # vision.lr_mult defaults to 1


def test_vision_lr_mult_applies_to_the_backbone_only() -> None:
    from openlbm.configs.presets import debug_policy as debug_cfg

    cfg = debug_cfg()
    policy = replace(cfg, vision=replace(cfg.vision, lr_mult=0.25)).build([ARM], {"arm": make_stats(ARM)})
    mult = {n: g["lr_mult"] for g in policy.param_groups(0.1) for n, p in policy.named_parameters()
            if any(p is q for q in g["params"])}
    assert mult["model.vision.backbone.conv1.weight"] == 0.25 and mult["model.vision.backbone.bn1.bias"] == 0.25
    assert mult["model.vision.pool.proj.weight"] == 1.0 and mult["model.vision.out.weight"] == 1.0
    frozen = replace(cfg, vision=replace(cfg.vision, frozen=True)).build([ARM], {"arm": make_stats(ARM)})
    names = {n for g in frozen.param_groups(0.1) for n, p in frozen.named_parameters() if any(p is q for q in g["params"])}
    assert not any(n.startswith("model.vision.backbone.") for n in names) and "model.vision.out.weight" in names


def test_text_encoder_is_not_in_state_dict_and_shared_by_copies(debug_policy: LBMPolicy) -> None:
    assert not any("text" in k for k in debug_policy.state_dict())
    twin = copy.deepcopy(debug_policy)
    assert twin.text_encoder is debug_policy.text_encoder
