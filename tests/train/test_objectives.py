"""The loop sums objectives, each averaged over the *global* batch on its own: splitting a batch into micro-batches
(one of them with no action at all, as a batch of action-less video is) gives exactly the one-batch update."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))
from policy_helpers import ARM, make_batch, make_stats, randomize_zero_init  # noqa: E402

from openlbm.configs.presets import debug  # noqa: E402
from openlbm.configs.presets import policy_preset as preset  # noqa: E402
from openlbm.configs.train import ObjectiveWeights, OptimConfig  # noqa: E402
from openlbm.train.loop import LossModule, train_step  # noqa: E402

L = 4


def _batch(rows: slice):
    h = preset("debug").horizon
    b = make_batch([ARM] * 4, h, seed=3)
    g = torch.Generator().manual_seed(5)
    b.latent_action = torch.randn(4, h, L, generator=g)
    b.latent_is_pad = torch.zeros(4, h, dtype=torch.bool)
    b.action_is_pad[:2] = True  # rows 0, 1: video, latent labels only
    b.latent_is_pad[2:] = True  # rows 2, 3: demos with actions, no latent labels
    b.action_is_pad[3, h // 2:] = True
    b.meta["sample_seed"] = torch.arange(100, 104)
    obs = b.obs
    obs = replace(obs, images={k: v[rows] for k, v in obs.images.items()}, state=obs.state[rows],
                  instruction=obs.instruction[rows], embodiment=obs.embodiment[rows])
    return replace(b, obs=obs, action=b.action[rows], action_is_pad=b.action_is_pad[rows],
                   action_dim_mask=b.action_dim_mask[rows], latent_action=b.latent_action[rows],
                   latent_is_pad=b.latent_is_pad[rows], meta={"sample_seed": b.meta["sample_seed"][rows]})


def _step(micro: list, weights: ObjectiveWeights) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    torch.manual_seed(0)
    policy = randomize_zero_init(replace(preset("debug"), latent_dim=L).build([ARM], {"arm": make_stats(ARM)}))
    policy.eval()  # no batch-norm statistics: a row's forward must not depend on which micro-batch holds it
    cfg = replace(debug(), optim=OptimConfig(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0),
                  objectives=weights)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    metrics = train_step(LossModule(policy), micro, opt, cfg, step=0)
    return {k: before[k] - v.detach() for k, v in policy.named_parameters()}, metrics


def test_each_objective_is_a_global_mean_whatever_the_micro_batches() -> None:
    w = ObjectiveWeights(action=1.0, latent=0.5)
    one, m1 = _step([_batch(slice(0, 4))], w)
    two, m2 = _step([_batch(slice(0, 2)), _batch(slice(2, 4))], w)  # the first micro-batch has no action at all
    assert set(m1) >= {"loss", "loss/action", "loss/latent"}
    for k in ("loss/action", "loss/latent", "loss"):
        assert abs(m1[k] - m2[k]) < 1e-5 * max(1.0, abs(m1[k])), (k, m1[k], m2[k])
    assert abs(m1["loss"] - (m1["loss/action"] + 0.5 * m1["loss/latent"])) < 1e-6
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-6, msg=k)
    moved = [k for k, d in one.items() if d.abs().sum() > 0]
    assert any("latent_out" in k for k in moved) and any("action_out" in k for k in moved)


def test_an_objective_weighted_zero_moves_nothing_of_its_own() -> None:
    upd, metrics = _step([_batch(slice(0, 4))], ObjectiveWeights(action=1.0, latent=0.0))
    assert upd["model.latent_out.weight"].abs().sum() == 0 and upd["model.action_out.arm.weight"].abs().sum() > 0
    assert metrics["loss"] == metrics["loss/action"] and metrics["loss/latent"] > 0
