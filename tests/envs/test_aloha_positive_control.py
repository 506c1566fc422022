"""ALOHA's positive control: a policy trained on a few transfer-cube demos must succeed from those demos' own initial
states (`lbm eval --demo-starts`), and its teacher-forced action error on them must be small. If it cannot, the
bimanual pipeline (wide 2:1 images, 14-d joint actions at 50 Hz, the eased expert, the execution schedule) has a bug,
and no null result on ALOHA means anything. Settings: the smallest that succeeded on every seed tried
(docs/simulation.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openlbm.cli import main

pytest.importorskip("gym_aloha")

from openlbm.envs.generate import demo_starts  # noqa: E402

TASK = "transfer-cube"
DEMOS = 3


def test_a_bimanual_policy_succeeds_on_its_own_demos_starts(tmp_path: Path) -> None:
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert main(["data", "generate", "--suite", "aloha", "--tasks", TASK, "--episodes-per-task", str(DEMOS),
                 "--cameras", "top", "--size", "64", "--height", "32", "--workers", "2", "--no-progress",
                 "--out", str(data)]) == 0
    starts = demo_starts(data)[TASK]
    assert len(starts) == DEMOS
    assert main(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "1500",
                 "--batch-size", "32"]) == 0
    assert main(["eval", "--suite", "aloha", "--policy", str(run), "--demo-starts", str(data), "--tasks", TASK,
                 "--episodes-per-task", str(DEMOS), "--max-steps", "300", "--num-workers", "2", "--no-record-video",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == sorted(starts)  # the demos' own initial states
    error = json.loads((out / "action_error.json").read_text())
    assert len(error["names"]) == 14 and error["names"][1] == "left_shoulder"
    assert np.all(np.isfinite(error["mean_abs"])) and error["overall"] < 0.05, error  # radians, teacher-forced
    assert sum(r["success"] for r in records) >= 1, (records, error)
