"""The latent action model: shapes, gradient flow, the codebook's EMA/dead-code mechanics, and that the decoder can
only reconstruct ``o_{t+k}`` through the code (a toy set of squares moving in four directions)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openlbm.models.latent_action import LatentActionConfig, LatentActionModel

TINY = LatentActionConfig(groups=2, codebook_size=4, code_dim=4, encoder_widths=(8, 16), encoder_hidden=32,
                          pool_size=2, decoder_widths=(8, 16), decoder_blocks=1, group_size=4, ema_decay=0.9)


def randomize_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for the zero-initialised layers (decoder output, FiLM), so the code reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d) and not m.weight.any():
                m.weight.copy_(0.1 * torch.randn(m.weight.shape, generator=g))
    return model


def frames(b: int, c: int = 3, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8))


def test_shapes_and_gradients_reach_every_part() -> None:
    torch.manual_seed(0)
    model = randomize_zero_init(TINY.build(num_cameras=2))
    o_t, o_tk = frames(5, c=6)
    out = model(o_t, o_tk)
    assert out.loss.ndim == 0 and out.codes.shape == (5, TINY.latent_dim) and out.indices.shape == (5, TINY.groups)
    assert out.pred.shape == (5, 6, 16, 16) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < TINY.codebook_size
    assert {"recon", "recon_static", "commit", "perplexity", "usage", "dead_reset"} <= set(out.metrics)
    out.loss.backward()
    for part in (model.encoder, model.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), type(part).__name__
    # the encoder learns through the straight-through code (its last layer), not only through the commitment loss
    assert model.encoder.mlp[-1].weight.grad.abs().sum() > 0


def test_untrained_decoder_predicts_no_motion_and_inputs_are_checked() -> None:
    model = TINY.build()
    o_t, o_tk = frames(3)
    out = model(o_t, o_tk)
    assert torch.equal(out.pred, o_t.float() / 255)  # zero-initialised output: the "copy o_t" baseline
    assert out.metrics["recon"] == pytest.approx(out.metrics["recon_static"])
    with pytest.raises(ValueError, match="uint8"):
        model(o_t.float(), o_tk)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(o_t[..., :14, :14], o_tk[..., :14, :14])


def test_first_training_batch_initialises_the_codebook_and_encode_never_updates_it() -> None:
    torch.manual_seed(0)
    model = TINY.build()
    before = model.quantizer.codebook.clone()
    out = model(*frames(8))
    # codes chosen by this batch move to their members' mean, every other one (all start dead) to a batch member
    chosen = len(torch.unique(out.indices[:, 0])) + len(torch.unique(out.indices[:, 1]))
    assert out.metrics["dead_reset"] == TINY.groups * TINY.codebook_size - chosen > 0
    cb = model.quantizer.codebook
    assert not torch.isclose(cb, before).all(-1).any()  # every code moved
    assert torch.allclose(cb.norm(dim=-1), torch.ones(TINY.groups, TINY.codebook_size), atol=1e-5)
    model.eval()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    codes, indices = model.encode(*frames(6, seed=1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert torch.equal(codes, model.quantizer.lookup(indices).flatten(1))  # codes are codebook rows
    out = model(*frames(6, seed=1))  # eval forward: same codes as encode
    assert torch.equal(out.indices, indices) and torch.allclose(out.codes, codes)


def test_bf16_autocast_trains_with_an_fp32_codebook() -> None:
    torch.manual_seed(0)
    model = TINY.build()
    for seed in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(*frames(8, seed=seed))
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.codes.dtype == torch.float32
    q = model.quantizer
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in (q.codebook, q.embed_sum, q.cluster_size))
    assert model.encoder.mlp[-1].weight.grad.abs().sum() > 0


def test_a_never_chosen_code_is_reinitialised() -> None:
    torch.manual_seed(0)
    model = TINY.build()
    model(*frames(8))
    q = model.quantizer
    with torch.no_grad():
        # a code opposite to a chosen one: no encoder output is near it (the EMA keeps it where embed_sum points)
        q.embed_sum[0, 1] = -q.embed_sum[0, 0]
        q.codebook[0, 1] = -q.codebook[0, 0]
    old = q.codebook[0, 1].clone()
    for step in range(TINY.dead_after - 1):
        model(*frames(8, seed=2 + step))
        assert torch.allclose(q.codebook[0, 1], old, atol=1e-6) and int(q.unused[0, 1]) == step + 1
    out = model(*frames(8, seed=100))  # the dead_after-th step without it: re-initialised from this batch
    assert out.metrics["dead_reset"] >= 1 and not torch.allclose(q.codebook[0, 1], old, atol=1e-3)
    assert int(q.unused[0, 1]) == 0 and float(q.cluster_size[0, 1]) > 0


def moving_squares(n: int, seed: int, size: int = 16, step: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4x4 square at a random place in ``o_t`` moved ``step`` px up/down/left/right in ``o_{t+k}``."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randint(0, 4, (n,), generator=g)
    moves = torch.tensor([[-step, 0], [step, 0], [0, -step], [0, step]])
    pos = torch.randint(step, size - 4 - step + 1, (n, 2), generator=g)
    o_t = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    o_tk = torch.zeros_like(o_t)
    for i in range(n):
        (y, x), (dy, dx) = pos[i].tolist(), moves[direction[i]].tolist()
        o_t[i, :, y : y + 4, x : x + 4] = 255
        o_tk[i, :, y + dy : y + dy + 4, x + dx : x + dx + 4] = 255
    return o_t, o_tk, direction


def train_toy(model: LatentActionModel, steps: int = 400) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(steps):
        o_t, o_tk, _ = moving_squares(32, seed=step)
        loss = model(o_t, o_tk).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_the_decoder_needs_the_code_to_reconstruct_the_next_frame() -> None:
    """After training, decoding with the pair's own code beats decoding with a zero code, or with the codes of
    other pairs, by a wide margin: the information about ``o_{t+k}`` flows through the code only."""
    torch.manual_seed(0)
    model = TINY.build()
    train_toy(model)
    model.eval()
    o_t, o_tk, direction = moving_squares(256, seed=10_000)
    target = o_tk.float() / 255
    with torch.no_grad():
        codes, indices = model.encode(o_t, o_tk)
        own = F.mse_loss(model.decode(o_t, codes), target).item()
        zero = F.mse_loss(model.decode(o_t, torch.zeros_like(codes)), target).item()
        shuffled = F.mse_loss(model.decode(o_t, codes.roll(1, dims=0)), target).item()
        static = F.mse_loss(o_t.float() / 255, target).item()
    assert own < 0.5 * zero and own < 0.5 * shuffled and own < 0.5 * static, (own, zero, shuffled, static)
    # and the codes tell the four directions apart: the pairs sharing a joint code mostly share a direction
    joint = indices[:, 0] * TINY.codebook_size + indices[:, 1]
    purity = sum(int(torch.bincount(direction[joint == c]).max()) for c in torch.unique(joint)) / len(joint)
    assert len(torch.unique(joint)) >= 4 and purity > 0.9, purity
