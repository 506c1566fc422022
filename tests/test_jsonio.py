"""JSON config I/O: every config round-trips exactly, and a file that does not fit names the field."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from openlbm.configs.presets import preset
from openlbm.configs.train import TrainConfig
from openlbm.data.mixture import SourceConfig
from openlbm.jsonio import changed_fields, from_jsonable, read_json, to_jsonable, write_json
from openlbm.policies.config import PolicyConfig


def _run_config() -> TrainConfig:
    cfg = preset("debug")
    sources = (SourceConfig(root=Path("data/a"), weight=2.0, rename={"observation.images.top": "cam"}),)
    return replace(cfg, data=replace(cfg.data, sources=sources), init_from=Path("runs/pre"), precision="bf16")


def test_train_config_round_trips_through_a_file(tmp_path: Path) -> None:
    cfg = _run_config()
    cfg.save(tmp_path / "config.json")
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left behind
    back = from_jsonable(TrainConfig, read_json(tmp_path / "config.json"), "run")
    assert back == cfg
    assert isinstance(back.data.sources[0].root, Path) and isinstance(back.policy.vision.widths, tuple)


def test_arrays_and_tuples_become_plain_json() -> None:
    stats = {"action": {"mean": np.array([1.0, 2.0], dtype=np.float32), "count": np.int64(3)}, 1: (Path("x"),)}
    assert json.loads(json.dumps(to_jsonable(stats))) == {"action": {"mean": [1.0, 2.0], "count": 3}, "1": ["x"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(horizon="sixteen"), r"policy\.horizon: expected int, got 'sixteen'"),
        (lambda d: d["trunk"].update(mlp_ratio="4"), r"policy\.trunk\.mlp_ratio: expected a number"),
        (lambda d: d.update(head="ddpm"), r"policy\.head: expected one of \['flow', 'diffusion'\], got 'ddpm'"),
        (lambda d: d["vision"].update(widths=[8, "16"]), r"policy\.vision\.widths\[1\]: expected int"),
        (lambda d: d.update(n_obs=2), r"policy: unknown config keys \['n_obs'\]"),
        (lambda d: d.update(trunk=3), r"policy\.trunk: expected an object"),
    ],
)
def test_a_value_that_does_not_fit_names_the_field(change, message: str) -> None:
    d = preset("debug").policy.to_dict()
    change(d)
    with pytest.raises(ValueError, match=message):
        PolicyConfig.from_dict(d)


def test_missing_required_field_and_bad_files_are_named(tmp_path: Path) -> None:
    d = to_jsonable(_run_config())
    del d["policy"]
    with pytest.raises(ValueError, match=r"run: missing config keys \['policy'\]"):
        from_jsonable(TrainConfig, d, "run")
    with pytest.raises(ValueError, match="nope.json: file not found"):
        read_json(tmp_path / "nope.json")
    write_json(tmp_path / "ok.json", {"a": 1})
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    assert read_json(tmp_path / "ok.json") == {"a": 1}


def test_changed_fields_names_nested_fields() -> None:
    old = _run_config()
    new = replace(old, steps=9, optim=replace(old.optim, lr=3e-4), data=replace(old.data, num_workers=1))
    assert changed_fields(to_jsonable(old), new) == [
        "data.num_workers: 0 -> 1", f"steps: {old.steps} -> 9", f"optim.lr: {old.optim.lr} -> 0.0003",
    ]
    assert changed_fields(old, new, keys=("seed", "steps")) == [f"steps: {old.steps} -> 9"]
    assert changed_fields(old, old) == []
