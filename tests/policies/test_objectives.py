"""The policy's auxiliary objectives: latent-action chunks through the shared trunk, and image-caption alignment
through the camera encoder and the instruction's language projection."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from policy_helpers import ARM, make_batch, make_stats, randomize_zero_init

from openlbm.configs.presets import policy_preset as preset
from openlbm.types import ImageTextBatch

L = 6


def _latent_policy():
    torch.manual_seed(0)
    cfg = replace(preset("debug"), latent_dim=L)
    return randomize_zero_init(cfg.build([ARM], {"arm": make_stats(ARM)}))


def _with_latents(batch, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, h = batch.action_is_pad.shape
    batch.latent_action = torch.nn.functional.normalize(torch.randn(b, h, L, generator=g), dim=-1)
    batch.latent_is_pad = torch.zeros(b, h, dtype=torch.bool)
    batch.latent_is_pad[0, h // 2:] = True  # the episode ended mid-chunk for row 0
    return batch


def test_latent_objective_trains_the_trunk_not_the_action_projections() -> None:
    policy = _latent_policy()
    h = policy.config.horizon
    batch = _with_latents(make_batch([ARM] * 3, h))
    batch.action_is_pad[:] = True  # video rows: latent labels, no actions
    losses, _ = policy.compute_loss(batch)
    assert set(losses) == {"action", "latent"} and losses["action"].item() == 0.0 and losses["latent"].item() > 0
    counts = policy.loss_weight(batch)
    assert counts["action"].item() == 0 and counts["latent"].item() == (3 * h - h // 2) * L
    losses["latent"].backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert grads["model.latent_out.weight"].abs().sum() > 0 and grads["model.latent_in.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("model.trunk."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("model.vision."))
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".action_in." in n or ".action_out." in n)


def test_latent_loss_is_a_mean_over_valid_steps_and_scale_free() -> None:
    policy = _latent_policy()
    h = policy.config.horizon
    batch = _with_latents(make_batch([ARM] * 2, h))
    batch.meta["sample_seed"] = torch.tensor([11, 12])  # per-sample noise: a row's loss does not depend on the other
    base = policy.compute_loss(batch)[0]["latent"].item()
    batch.latent_action *= 3.0  # codes are scaled to unit RMS per step: the target does not change
    assert policy.compute_loss(batch)[0]["latent"].item() == pytest.approx(base, rel=1e-5)
    # A row without latent labels (all pad) adds nothing: the loss is the other row's alone.
    alone = _with_latents(make_batch([ARM] * 2, h))
    alone.meta["sample_seed"] = batch.meta["sample_seed"]
    alone.latent_is_pad[0] = True
    two = policy.compute_loss(alone)[0]["latent"].item()
    row1 = policy.compute_loss(_row(alone, 1))[0]["latent"].item()
    assert two == pytest.approx(row1, rel=1e-5) and two != pytest.approx(base, rel=1e-3)


def _row(batch, i: int):
    """Row ``i`` of a batch as a batch of one (per-sample seeds keep its noise)."""
    from dataclasses import replace as dc_replace

    obs = batch.obs
    sl = slice(i, i + 1)
    obs1 = dc_replace(obs, images={k: v[sl] for k, v in obs.images.items()}, state=obs.state[sl],
                      instruction=obs.instruction[sl], embodiment=obs.embodiment[sl])
    return dc_replace(batch, obs=obs1, action=batch.action[sl], action_is_pad=batch.action_is_pad[sl],
                      action_dim_mask=batch.action_dim_mask[sl], latent_action=batch.latent_action[sl],
                      latent_is_pad=batch.latent_is_pad[sl], meta={"sample_seed": batch.meta["sample_seed"][sl]})


def test_latent_labels_need_a_latent_head_of_their_width(debug_policy) -> None:
    batch = _with_latents(make_batch([ARM] * 2, debug_policy.config.horizon))
    with pytest.raises(ValueError, match=f"set --policy.latent-dim {L}"):
        debug_policy.compute_loss(batch)


def _pairs(captions: list[str], seed: int = 0) -> ImageTextBatch:
    """One solid colour per distinct caption (plus noise), so captions are predictable from pixels."""
    g = torch.Generator().manual_seed(seed)
    colours = {"a red cube": (220, 30, 30), "a green cube": (30, 200, 40), "a blue cube": (30, 40, 210)}
    imgs = torch.stack([torch.tensor(colours[c], dtype=torch.float32)[:, None, None].expand(3, 32, 32)
                        + 20 * torch.randn(3, 32, 32, generator=g) for c in captions])
    return ImageTextBatch(imgs.clamp(0, 255).to(torch.uint8), list(captions))


def test_image_text_loss_counts_every_same_caption_pair_as_positive(debug_policy) -> None:
    captions = ["a red cube", "a green cube", "a red cube", "a blue cube"]
    batch = make_batch([ARM] * 2, debug_policy.config.horizon)
    batch.image_text = _pairs(captions)
    losses, metrics = debug_policy.compute_loss(batch)
    assert debug_policy.loss_weight(batch)["image_text"].item() == 8  # 4 rows + 4 columns
    with torch.no_grad():
        text = debug_policy.text_encoder.encode(captions)
        logits = debug_policy.model.image_text_logits(batch.image_text.images, text)
    same = torch.tensor([[a == b for b in captions] for a in captions])
    want = 0.0
    for lg, pos in ((logits, same), (logits.T, same.T)):
        for i in range(4):
            want -= torch.log(lg[i].softmax(0)[pos[i]].sum()).item()
    assert losses["image_text"].item() == pytest.approx(want / 8, rel=1e-5)
    assert 0.0 <= metrics["image_text_acc"] <= 1.0


def test_image_text_alignment_is_learnable(debug_policy) -> None:
    captions = ["a red cube", "a green cube", "a blue cube", "a green cube", "a red cube", "a blue cube"]
    batch = make_batch([ARM] * 2, debug_policy.config.horizon)
    params = [p for n, p in debug_policy.named_parameters() if n.startswith(("model.vision.", "model.language."))]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = last = None
    for step in range(40):
        batch.image_text = _pairs(captions, seed=step)
        loss = debug_policy.compute_loss(batch)[0]["image_text"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first, (first, last)


def test_a_latent_head_changes_nothing_for_action_only_training() -> None:
    """Same seed, with and without the latent head: the shared weights start equal, and on action-only data the
    latent head gets no gradient and the shared weights get the same one."""
    torch.manual_seed(0)
    plain = preset("debug").build([ARM], {"arm": make_stats(ARM)})
    torch.manual_seed(0)
    latent = replace(preset("debug"), latent_dim=L).build([ARM], {"arm": make_stats(ARM)})
    shared = plain.state_dict()
    assert set(shared) < set(latent.state_dict())
    for name, value in latent.state_dict().items():
        if name in shared:
            assert torch.equal(value, shared[name]), name
    batch = make_batch([ARM] * 3, plain.config.horizon)
    batch.meta["sample_seed"] = torch.tensor([1, 2, 3])
    for policy in (plain, latent):
        policy.compute_loss(batch)[0]["action"].backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for name, p in latent.named_parameters():
        if name in grads:
            assert (p.grad is None) == (grads[name] is None) and (p.grad is None or torch.equal(p.grad, grads[name]))
        else:
            assert p.grad is None, name
