"""Teacher-forced action error (``openlbm.eval.action_error``): 0 for a policy that reproduces the demos, the
perturbation itself for one that does not, padded rows past an episode's end never counted."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))

from data_helpers import action_of, make_dataset  # noqa: E402

from openlbm.eval.action_error import teacher_forced_error  # noqa: E402
from openlbm.types import EmbodimentSpec, Observation  # noqa: E402

TOY = EmbodimentSpec("toy", ("cam",), (32, 32), state_dim=3, action_dim=2, fps=10.0)
LENGTHS = (5, 8, 6)


class _Replayer:
    """Reads (episode, frame) from the last observed state (``state_of`` = [ep, t, ...]) and returns the actions the
    demo executed from there on (``action_of``, also past the episode's end), plus ``offset``."""

    def __init__(self, offset: tuple[float, float] = (0.0, 0.0), horizon: int = 4) -> None:
        self.config = SimpleNamespace(n_obs_steps=2, horizon=horizon)
        self.specs = {"toy": TOY}
        self.offset = torch.tensor(offset)
        self.seen_pad: list[Tensor] = []

    def predict_chunk(self, obs: Observation, generator: torch.Generator | None = None) -> Tensor:
        assert obs.images["cam"].shape[1:] == (2, 3, 32, 32) and obs.images["cam"].dtype == torch.uint8
        assert obs.embodiment == ["toy"] * obs.batch_size and obs.obs_is_pad is not None
        self.seen_pad.append(obs.obs_is_pad)
        ep, t = obs.state[:, -1, 0].long().tolist(), obs.state[:, -1, 1].long().tolist()
        rows = [[action_of(e, f + k) for k in range(self.config.horizon)] for e, f in zip(ep, t, strict=True)]
        return torch.from_numpy(np.array(rows)) + self.offset  # [B, H, 2]


def test_a_policy_that_replays_the_demos_has_zero_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "toy", LENGTHS)
    policy = _Replayer()
    err = teacher_forced_error(policy, root, steps=3, batch_size=4)
    assert err.windows == sum(LENGTHS) and err.steps == 3 and len(err.names) == 2
    # rows past an episode's end are padding (the demo's last action repeated, not action_of's continuation): any
    # of them counted would make this error > 0
    assert err.mean_abs == pytest.approx((0.0, 0.0), abs=1e-9)
    pads = torch.cat(policy.seen_pad)  # [19, 2]: the first frame of each episode is padded, as in training
    assert int(pads[:, 0].sum()) == len(LENGTHS) and not pads[:, 1].any()
    assert "mean" in err.lines()[-1] and err.to_dict()["overall"] == pytest.approx(0.0)


def test_a_perturbed_policy_shows_its_perturbation_per_dim(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "toy", LENGTHS)
    err = teacher_forced_error(_Replayer(offset=(0.0, 0.25)), root, steps=1, stride=2, episodes=[1, 2])
    assert err.windows == len(range(0, 8 + 6, 2))
    assert err.mean_abs == pytest.approx((0.0, 0.25), abs=1e-6)
    with pytest.raises(ValueError, match="steps <= horizon"):
        teacher_forced_error(_Replayer(), root, steps=5)


def test_a_real_policy_runs_on_recorded_windows(tmp_path: Path) -> None:
    from policy_helpers import make_stats

    from openlbm.configs.presets import policy_preset

    root = make_dataset(tmp_path / "toy", LENGTHS)
    policy = policy_preset("debug").build([TOY], {"toy": make_stats(TOY)}).eval()
    err = teacher_forced_error(policy, root, steps=2, stride=3)
    assert err.windows == len(range(0, sum(LENGTHS), 3)) and all(np.isfinite(err.mean_abs)) and err.overall > 0
    with pytest.raises(ValueError, match="none of the policy's embodiments"):
        other = EmbodimentSpec("other", ("cam",), (32, 32), state_dim=3, action_dim=2)
        teacher_forced_error(SimpleNamespace(config=policy.config, specs={"a": TOY, "b": other}), root)
