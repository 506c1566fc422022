"""ALOHA's positive control: a policy trained on a few transfer-cube demos must fit them and succeed from their own
initial states (`lbm eval --demo-starts`). If it cannot, the bimanual pipeline (wide 2:1 images, 14-d joint actions
at 50 Hz, the eased expert) has a bug, and no null result on ALOHA means anything.

About 2 minutes on 2 cores: 3 demos at 32x64, the debug policy with a 64-wide trunk for 1500 steps, 300-step
rollouts. Its teacher-forced error per joint (reported by the same `lbm eval --demo-starts`) must be far below the
constant policy's, and at least one of the three starts must succeed: 1 of 3 is what every toy setting tried reached
(docs/simulation.md, "Positive control at toy size"); training and evaluation are deterministic on a given machine
(this one: the third start succeeds every run)."""

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


def test_a_bimanual_policy_fits_and_succeeds_on_its_own_demos_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openlbm.data.dataset import RobotDataset

    data, run = tmp_path / "data", tmp_path / "run"
    starts = _demos(data, 3)
    assert main(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "1500",
                 "--batch-size", "32", "--policy.trunk.dim", "64"]) == 0
    records, error = _eval(run, data, tmp_path / "eval", 3, 300)
    assert sorted(r["seed"] for r in records) == sorted(starts)  # the demos' own initial states
    assert "teacher-forced action error" in capsys.readouterr().out  # printed beside the success table
    ds = RobotDataset(data)
    actions = np.asarray(ds.store.get("action", np.arange(ds.meta.num_frames)))  # [N, 14]
    constant = np.abs(actions - actions.mean(0)).mean(0)  # [14]: about the best input-blind policy's error
    got = np.asarray(error["mean_abs"])
    assert error["names"][1] == "left_shoulder" and got.shape == (14,) and error["windows"] > 100
    assert error["overall"] < 0.02, error  # radians, teacher-forced (measured 0.0105; constant policy 0.25)
    moving = constant > 0.1  # the joints the demos move (the waists and forearm rolls barely do)
    assert (got[moving] < 0.25 * constant[moving]).all(), (got, constant)  # measured at most 0.12x
    assert sum(r["success"] for r in records) >= 1, (records, error)  # measured 1 of 3
