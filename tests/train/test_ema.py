from __future__ import annotations

import pytest
import torch
from torch import nn

from openlbm.configs.train import EMAConfig
from openlbm.train.ema import EMA, ema_decay


def test_decay_warmup_and_cap() -> None:
    cfg = EMAConfig(decay=0.99, power=1.0, update_after_step=3)
    assert [ema_decay(s, cfg) for s in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert ema_decay(4, cfg) == pytest.approx(1 - 1 / 2)
    assert ema_decay(10_000, cfg) == 0.99


def test_ema_matches_closed_form() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    cfg = EMAConfig(decay=0.9, power=1.0)
    ema = EMA(model, cfg)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        d = ema.update(model, step)
        assert d == pytest.approx(min(0.9, 1 - (1 + step) ** -1.0))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for e, p in zip(expected, ema.module.parameters(), strict=True):
        torch.testing.assert_close(p, e)
    # buffers are the model's own, copied when the average is exported; the EMA copy never requires grad
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert ema.export(model) is ema.module
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_round_trip_and_mismatch() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, EMAConfig())
    ema.update(model, 0)
    other = EMA(nn.Linear(2, 2), EMAConfig())
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="EMA state mismatch"):
        EMA(nn.Linear(2, 3, bias=False), EMAConfig()).load_state_dict(ema.state_dict())
