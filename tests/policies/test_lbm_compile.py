"""``torch.compile`` sees the policy's training computation whole: ``compute_loss`` (after ``prepare_batch``, the
host-side text encoding the trainer does as batches come off the loader) traces as one graph, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
from policy_helpers import ARM, make_batch

from openlbm.policies.lbm import LBMPolicy
from openlbm.train.step import LossModule


def _batch(policy: LBMPolicy, seed: int = 0):  # noqa: ANN202
    batch = make_batch([ARM, ARM, ARM], policy.config.horizon, seed=seed)
    batch.meta["sample_seed"] = torch.tensor([5, 6, 7]) + seed
    return policy.prepare_batch(batch)


def test_compute_loss_traces_without_a_graph_break(debug_policy: LBMPolicy) -> None:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(LossModule(debug_policy, validated=True))(_batch(debug_policy))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_the_compiled_step_trains_like_the_eager_one(debug_policy: LBMPolicy) -> None:
    """Forward and backward through AOTAutograd (``aot_eager``: the graphs inductor would compile, run eagerly, so
    the test needs no C compiler); a second batch of the same shapes reuses the graph (no recompile)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = LossModule(debug_policy, validated=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    params = [p for p in debug_policy.parameters() if p.requires_grad]
    for seed in (0, 1):
        batch = _batch(debug_policy, seed)
        traced = compiled(batch)[0]["action"]  # first: an eager call would fill the module's caches beforehand
        traced_grads = torch.autograd.grad(traced, params, allow_unused=True)
        eager = model(batch)[0]["action"]
        grads = torch.autograd.grad(eager, params, allow_unused=True)
        torch.testing.assert_close(traced, eager)
        for g, t in zip(grads, traced_grads, strict=True):
            assert (g is None) == (t is None)
            if g is not None:
                torch.testing.assert_close(t, g)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_inductor_compiles_the_step_on_cpu(debug_policy: LBMPolicy) -> None:
    """The real backend (C++ codegen: needs a C compiler; minutes on a busy 2-core machine)."""
    torch._dynamo.reset()
    compiled = torch.compile(LossModule(debug_policy, validated=True), fullgraph=True)
    loss = compiled(_batch(debug_policy))[0]["action"]
    loss.backward()
    assert torch.isfinite(loss)
