"""End-to-end smoke run of the whole quickstart pipeline (demos -> train -> eval -> report) at toy sizes."""

from __future__ import annotations

import json
from pathlib import Path

from openlbm.cli import main
from openlbm.data.validate import validate_dataset

TASKS = "button-press-topdown-v3,push-v3"  # one easy and one hard task of MT50: the group table has two rows


def test_quickstart_smoke_runs_every_stage(tmp_path: Path) -> None:
    """The whole recipe (docs/benchmarks.md runs it on MT50) at toy size: two tasks, the debug preset."""
    out = tmp_path / "qs"
    assert main(["quickstart", "--smoke", "--tasks", TASKS, "--out", str(out), "--workers", "2"]) == 0

    # Stage 1: a valid LeRobot-v3 dataset with the demos of both smoke tasks.
    assert validate_dataset(out / "data") == []
    # Stage 2: a loadable policy checkpoint, and in-training evaluation logged as curves.
    assert (out / "train" / "checkpoints" / "latest").is_file()
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "eval/success" in m] == [3, 6]
    # Stage 3 + 4: every planned episode recorded, summary and a self-contained report.
    records = [json.loads(line) for line in (out / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["task"] for r in records} == set(TASKS.split(","))
    assert all(r["error"] is None for r in records)
    result = json.loads((out / "eval" / "quickstart.json").read_text())
    assert result["overall"]["n"] == 4
    # the difficulty-group table comes out of the records
    summary = json.loads((out / "eval" / "summary.json").read_text())
    wins = {t: sum(r["success"] for r in records if r["task"] == t) for t in TASKS.split(",")}
    assert {g: (e["successes"], e["n"]) for g, e in summary["groups"].items()} == {
        "easy": (wins["button-press-topdown-v3"], 2), "hard": (wins["push-v3"], 2)}
    assert summary["group_mean"]["rate"] == (wins["button-press-topdown-v3"] / 2 + wins["push-v3"] / 2) / 2
    html = (out / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html

    # Running again resumes: every stage is already complete and nothing is redone.
    assert main(["quickstart", "--smoke", "--tasks", TASKS, "--out", str(out), "--workers", "2"]) == 0
    again = [json.loads(line) for line in (out / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert again == records
