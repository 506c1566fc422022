"""``LAM``: frame pairs from training batches (no actions read), optimizer groups, save/load of the model dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from policy_helpers import randomize_zero_init

from openlbm.models.latent_action import LatentActionConfig
from openlbm.policies.latent_action import LAM, LAMConfig
from openlbm.types import Batch, EmbodimentSpec, Observation

CAM_ARM = EmbodimentSpec("arm", ("front", "wrist"), (16, 16), state_dim=3, action_dim=2)
VIDEO = EmbodimentSpec("video", ("front", "wrist"), (16, 16), state_dim=0, action_dim=0)
TINY = LatentActionConfig(groups=2, codebook_size=4, code_dim=4, encoder_widths=(8, 16), encoder_hidden=32,
                          pool_size=2, decoder_widths=(8, 16), decoder_blocks=1, group_size=4)
CFG = LAMConfig(frame_gap=2, model=TINY)


def lam(seed: int = 0) -> LAM:
    torch.manual_seed(seed)
    model = CFG.build([CAM_ARM, VIDEO])
    randomize_zero_init(model)
    return model


def video_batch(b: int = 4, t: int = 3, seed: int = 0) -> Batch:
    """Frames only: no state, no action dims, every action step padded (what action-less video looks like)."""
    g = torch.Generator().manual_seed(seed)
    images = {c: torch.randint(0, 256, (b, t, 3, 16, 16), generator=g, dtype=torch.uint8) for c in ("front", "wrist")}
    obs = Observation(images=images, state=torch.zeros(b, t, 0), instruction=[""] * b, embodiment=["video"] * b)
    return Batch(obs, torch.zeros(b, 1, 0), torch.ones(b, 1, dtype=torch.bool), torch.zeros(b, 0, dtype=torch.bool))


def test_compute_loss_pairs_the_window_ends_and_needs_no_actions() -> None:
    model = lam()
    batch = video_batch()
    assert CFG.n_obs_steps == 3 and CFG.horizon == 1
    loss, metrics = model.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and {"recon", "commit", "perplexity", "usage"} <= set(metrics)
    assert float(model.loss_weight(batch)) == 4.0  # every sample counts, though no action element does
    model.eval()
    out = model.forward_pairs(batch)
    frames = torch.cat([batch.obs.images["front"], batch.obs.images["wrist"]], dim=2)  # [B, T, 6, H, W]
    codes, indices = model.model.encode(frames[:, 0], frames[:, -1])
    assert torch.equal(out.indices, indices) and torch.allclose(out.codes, codes)
    # the middle frame is not part of the pair
    batch.obs.images["front"][:, 1] = 0
    assert torch.equal(model.forward_pairs(batch).indices, indices)


def test_wrong_window_cameras_and_sizes_are_named() -> None:
    model = lam()
    with pytest.raises(ValueError, match="needs n_obs_steps = 3"):
        model.compute_loss(video_batch(t=2))
    batch = video_batch()
    del batch.obs.images["wrist"]
    with pytest.raises(ValueError, match=r"lack camera\(s\) \['wrist'\]"):
        model.compute_loss(batch)
    with pytest.raises(ValueError, match="lacks camera"):
        CFG.build([CAM_ARM, EmbodimentSpec("top", ("top",), (16, 16), 1, 1)])
    with pytest.raises(ValueError, match="different image sizes"):
        CFG.build([CAM_ARM, EmbodimentSpec("big", ("front", "wrist"), (32, 32), 1, 1)])


def test_param_groups_cover_every_parameter_once() -> None:
    model = lam()
    groups = model.param_groups(weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = lam()
    model.train()
    model.compute_loss(video_batch())  # moves the codebook away from its initial state
    model.eval()
    d = model.save(tmp_path / "lam")
    meta = json.loads((d / "config.json").read_text())
    assert meta["format"] == "openlbm.latent_action" and meta["cameras"] == ["front", "wrist"]
    loaded = LAM.load(d)
    assert loaded.config == CFG and loaded.cameras == model.cameras and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    batch = video_batch(seed=3)
    o_t = {c: batch.obs.images[c][:, 0] for c in model.cameras}
    o_tk = {c: batch.obs.images[c][:, -1] for c in model.cameras}
    a, b = model.encode(o_t, o_tk), loaded.encode(o_t, o_tk)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_policy_dir_is_refused_with_its_format(tmp_path: Path, debug_policy) -> None:
    debug_policy.save(tmp_path / "policy")
    with pytest.raises(ValueError, match="format 'openlbm.policy', expected 'openlbm.latent_action'"):
        LAM.load(tmp_path / "policy")
    with pytest.raises(FileNotFoundError, match="not a latent action model dir: config.json missing"):
        LAM.load(tmp_path)
