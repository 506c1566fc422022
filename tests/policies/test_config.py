"""``PolicyConfig.from_dict`` checks every field's type (via :mod:`openlbm.jsonio`): a hand-edited config.json fails
naming the field; ``LBMPolicy.read_dir`` adds the file (see tests/test_cli_errors.py)."""

from __future__ import annotations

import json

import pytest

from openlbm.configs.presets import POLICY_PRESETS as PRESETS
from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.config import PolicyConfig


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    cfg = preset(name)
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("horizon",), "sixteen", "policy.horizon: expected int, got 'sixteen'"),
    (("horizon",), True, "policy.horizon: expected int, got True"),
    (("head",), "ddpm", "policy.head: expected one of ['flow', 'diffusion'], got 'ddpm'"),
    (("trunk", "dim"), 32.5, "policy.trunk.dim: expected int, got 32.5"),
    (("vision", "widths"), "8,16", "policy.vision.widths: expected a list, got '8,16'"),
    (("vision", "widths"), [8, "x"], "policy.vision.widths[1]: expected int, got 'x'"),
    (("language", "path"), 3, "policy.language.path: expected a path string, got 3"),
    (("n_action_steps",), 99, "policy: n_action_steps must be in [1, horizon=8], got 99"),
])
def test_wrong_types_name_file_and_field(path: tuple[str, ...], value: object, expected: str) -> None:
    d = preset("debug").to_dict()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError) as e:
        PolicyConfig.from_dict(d)
    assert str(e.value) == expected


def test_floats_accept_json_integers() -> None:
    d = preset("debug").to_dict()
    d["flow"]["time_scale"] = 1000
    assert isinstance(PolicyConfig.from_dict(d).flow.time_scale, float)
