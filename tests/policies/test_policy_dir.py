"""Finding the policy dir in a run dir, a checkpoint dir or a policy dir (what eval, serve and --init-from load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openlbm.policies.policy_dir import list_checkpoints, read_latest, resolve_policy_dir


def _fake_step_dirs(root: Path, steps: list[int]) -> None:
    for s in steps:
        d = root / f"step_{s:08d}"
        (d / "policy").mkdir(parents=True)
        (d / "trainer.json").write_text(json.dumps({"step": s}))
        (d / "policy" / "model.safetensors").write_bytes(b"")
        (d / "policy" / "config.json").write_text("{}")


def test_resolve_policy_dir_from_run_checkpoint_or_policy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "config.json").parent.mkdir()
    (run / "config.json").write_text("{}")  # a run dir's config.json is not a policy's
    _fake_step_dirs(run / "checkpoints", [5, 7])
    (run / "checkpoints" / "latest").write_text("step_00000005\n")
    want = run / "checkpoints" / "step_00000005" / "policy"
    assert resolve_policy_dir(run) == want
    assert resolve_policy_dir(want.parent) == want
    assert resolve_policy_dir(want) == want
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_policy_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a policy dir"):
        resolve_policy_dir(tmp_path)
    (run / "checkpoints" / "latest").write_text("step_00000099\n")
    with pytest.raises(FileNotFoundError, match="step_00000099"):
        resolve_policy_dir(run)


def test_latest_falls_back_to_newest_step_dir(tmp_path: Path) -> None:
    assert read_latest(tmp_path) is None and list_checkpoints(tmp_path / "missing") == []
    _fake_step_dirs(tmp_path, [10, 3])
    (tmp_path / ".tmp_step_00000011").mkdir()  # an interrupted save is not a checkpoint
    assert [d.name for d in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000010"]
    assert read_latest(tmp_path).name == "step_00000010"  # no `latest` file: the newest complete one
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_policy_dir(run)
