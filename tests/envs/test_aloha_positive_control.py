"""ALOHA's positive control: a policy trained on a few transfer-cube demos must fit them and succeed from their own
initial states (`lbm eval --demo-starts`). If it cannot, the bimanual pipeline (wide 2:1 images, 14-d joint actions
at 50 Hz, the eased expert) has a bug, and no null result on ALOHA means anything.

The default suite runs the fitting half (a few minutes of CPU at most): trained for 300 steps, the policy's
teacher-forced error on its demos, per joint, must be far below that of the best constant policy (the demos' mean
action), through the same `lbm eval --demo-starts` that reports it beside success. Success itself needs ~1500 steps
and was not reliable at toy size (1 of 3 starts in every setting tried; docs/simulation.md), so that half is slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openlbm.cli import main

pytest.importorskip("gym_aloha")

from openlbm.envs.generate import demo_starts  # noqa: E402

TASK = "transfer-cube"


def _demos(data: Path, n: int) -> list[int]:
    assert main(["data", "generate", "--suite", "aloha", "--tasks", TASK, "--episodes-per-task", str(n),
                 "--cameras", "top", "--size", "64", "--height", "32", "--workers", "2", "--no-progress",
                 "--out", str(data)]) == 0
    starts = demo_starts(data)[TASK]
    assert len(starts) == n
    return starts


def _eval(run: Path, data: Path, out: Path, n: int, max_steps: int) -> tuple[list[dict], dict]:
    assert main(["eval", "--suite", "aloha", "--policy", str(run), "--demo-starts", str(data), "--tasks", TASK,
                 "--episodes-per-task", str(n), "--max-steps", str(max_steps), "--num-workers", "2",
                 "--no-record-video", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    return records, json.loads((out / "action_error.json").read_text())


def test_a_bimanual_policy_fits_its_demos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from openlbm.data.dataset import RobotDataset

    data, run = tmp_path / "data", tmp_path / "run"
    starts = _demos(data, 2)
    assert main(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "300",
                 "--batch-size", "32"]) == 0
    records, error = _eval(run, data, tmp_path / "eval", 2, 20)  # a short rollout: the fit is what is checked here
    assert sorted(r["seed"] for r in records) == sorted(starts)
    assert "teacher-forced action error" in capsys.readouterr().out
    ds = RobotDataset(data)
    actions = np.asarray(ds.store.get("action", np.arange(ds.meta.num_frames)))  # [N, 14]
    constant = np.abs(actions - actions.mean(0)).mean(0)  # [14]: the best input-blind policy's error (roughly)
    got = np.asarray(error["mean_abs"])
    assert error["names"][1] == "left_shoulder" and got.shape == (14,) and error["windows"] > 50
    assert error["overall"] < 0.35 * constant.mean(), (error, constant)  # measured ~0.18x after 300-400 steps
    moving = constant > 0.1  # the joints the demos move; the waists barely do
    assert (got[moving] < 0.5 * constant[moving]).all(), (got, constant)


@pytest.mark.slow
def test_a_bimanual_policy_succeeds_on_its_own_demos_starts(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    starts = _demos(data, 3)
    assert main(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "1500",
                 "--batch-size", "32", "--policy.trunk.dim", "64"]) == 0
    records, error = _eval(run, data, tmp_path / "eval", 3, 300)
    assert sorted(r["seed"] for r in records) == sorted(starts)  # the demos' own initial states
    assert error["overall"] < 0.02, error  # radians, teacher-forced (measured 0.010-0.014)
    assert sum(r["success"] for r in records) >= 1, (records, error)
