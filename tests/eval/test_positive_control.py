"""The learning pipeline's positive control: a policy trained on a few demos must succeed from those demos' own
initial states (`lbm eval --demo-starts`). If it cannot, the pipeline has a bug, and no null result elsewhere
means anything. drawer-close is the task a tiny policy fits in a few hundred steps (reach's goal is a pixel or two
at 32 px and needs far more)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openlbm.cli import main
from openlbm.envs.generate import demo_starts

TASK = "drawer-close-v3"


def test_a_policy_succeeds_on_its_own_demos_starts(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "generate", "--tasks", TASK, "--episodes-per-task", "3", "--size", "32", "--cameras",
                 "corner2", "--workers", "2", "--no-progress", "--out", str(data)]) == 0
    starts = demo_starts(data)[TASK]
    assert len(starts) == 3
    assert main(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "400",
                 "--batch-size", "32"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--policy", str(run), "--demo-starts", str(data), "--tasks", TASK, "--episodes-per-task", "3",
                 "--max-steps", "150", "--num-workers", "2", "--no-record-video", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == sorted(starts)  # the demos' own initial states, not held-out ones
    assert sum(r["success"] for r in records) >= 2, records


def test_demo_starts_need_enough_demos_and_a_generated_dataset(tmp_path: Path) -> None:
    from openlbm.eval.runner import plan_episodes

    with pytest.raises(ValueError, match="has 1 demo"):
        plan_episodes([TASK], 2, 0, "train", {TASK: [7]})
    assert [e.seed for e in plan_episodes([TASK], 2, 0, "train", {TASK: [7, 9, 11]})] == [7, 9]
    with pytest.raises(FileNotFoundError, match="recorded by `lbm data generate` only"):
        demo_starts(tmp_path)
