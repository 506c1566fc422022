"""`lbm eval` / `lbm compare` / `lbm report` end to end with the scripted expert, and the report in real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import render_in_chromium
from openlbm.cli import main
from openlbm.eval.report import write_report

TASKS = "button-press-topdown-v3,drawer-close-v3"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training-run-shaped dir: metrics.jsonl plus two evals of the expert (full time limit, and one too short
    for drawer-close, which needs ~80 steps, so both successes and failures are recorded)."""
    run = tmp_path_factory.mktemp("run")
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(0, 1001, 50):
            row = {"step": step, "loss": 2.0 / (1 + step / 100), "lr": 1e-4 * min(1.0, (step + 1) / 200),
                   "samples_per_s": 400.0 + step % 7}
            if step % 250 == 0:
                row["eval/success"] = step / 1000
            f.write(json.dumps(row) + "\n")
    common = ["eval", "--policy", "expert", "--tasks", TASKS, "--episodes-per-task", "2", "--cameras", "corner2",
              "--image-size", "32", "32", "--num-workers", "2"]
    assert main([*common, "--out", str(run / "eval" / "full")]) == 0
    assert main([*common, "--max-steps", "70", "--out", str(run / "eval" / "short")]) == 0
    return run


def test_expert_scores_its_known_rate_through_lbm_eval(run_dir: Path) -> None:
    full = json.loads((run_dir / "eval" / "full" / "summary.json").read_text())
    # The scripted expert solves both tasks on every start (ENVS measures ~100% for them).
    assert full["overall"]["successes"] == full["overall"]["n"] == 4
    short = json.loads((run_dir / "eval" / "short" / "summary.json").read_text())
    assert short["tasks"]["drawer-close-v3"]["successes"] == 0  # cut off at 70 steps
    assert (run_dir / "eval" / "full" / "report.html").is_file()
    clips = sorted(p.name for p in (run_dir / "eval" / "short" / "videos").glob("*.mp4"))
    assert any("drawer-close-v3__failure" in c for c in clips)


def test_compare_command_paired_and_sequential(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    rc = main(["compare", str(run_dir / "eval" / "full"), str(run_dir / "eval" / "short"), "--sequential",
               "--look-every", "2", "--json-out", str(out), "--report", str(tmp_path / "cmp.html")])
    assert rc == 0
    res = json.loads(out.read_text())[str(run_dir / "eval" / "short")]
    drawer = next(t for t in res["tasks"] if t["task"] == "drawer-close-v3")
    assert drawer["test"] == "mcnemar" and drawer["a_only"] == 2 and drawer["b_only"] == 0
    assert drawer["p_value"] == pytest.approx(0.5)  # two discordant pairs: 2 * (1/2)^2
    assert drawer["verdict"] == "no significant difference"  # 2 episodes cannot show it
    assert res["sequential"]["verdict"] == "no significant difference"
    assert "Runs compared" in (tmp_path / "cmp.html").read_text()


def test_compare_command_noninferiority(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ni.json"
    full, short = str(run_dir / "eval" / "full"), str(run_dir / "eval" / "short")
    assert main(["compare", full, short, "--margin", "0.1", "--json-out", str(out)]) == 0
    res = json.loads(out.read_text())[short]
    assert res["overall"]["diff"] == pytest.approx(-0.5)  # drawer-close fails both starts when cut short
    lo, hi = res["overall"]["diff_interval"]
    # half the episodes lost, yet 4 pairs cannot tell "worse by more than 10 points" from "not worse"
    assert lo < -0.1 < hi and res["noninferiority"] == "undetermined"
    assert "margin 10.0 pp: undetermined" in " ".join(capsys.readouterr().out.split())


def test_report_command_on_run_dir(run_dir: Path, tmp_path: Path) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Training curves" in page and "Runs compared" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    report = write_report(run_dir, out=tmp_path / "report.html")
    result, dom = render_in_chromium(report, tmp_path)
    # Bar chart, posteriors, training curves: every image decoded.
    assert len(result["imgs"]) >= 3 and all(w > 0 for w in result["imgs"])
    # Two evals' clips (successes of both, a failure of the short one): each decoded, 32 px wide, no media error.
    assert len(result["vids"]) >= 3
    for ready, width, error in result["vids"]:
        assert ready >= 2 and width == 32 and error == 0
    assert "drawer-close-v3 — failure" in dom


def test_difficulty_groups_come_out_of_eval_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Meta-World tasks of two difficulty groups: `lbm eval` and `lbm report` print the group table, and
    summary.json's groups are recomputed from the per-episode records."""
    out = tmp_path / "groups"
    assert main(["eval", "--policy", "expert", "--tasks", "reach-v3,push-v3,pick-place-v3", "--episodes-per-task", "2",
                 "--cameras", "corner2", "--image-size", "32", "32", "--num-workers", "2", "--max-steps", "60",
                 "--no-record-video", "--out", str(out)]) == 0
    assert "mean of 2 group means" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    (out / "summary.json").unlink()  # the records are the source of truth
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "easy (1 tasks)" in printed and "hard (2 tasks)" in printed and "all episodes" in printed
    summary = json.loads((out / "summary.json").read_text())
    wins = {t: sum(r["success"] for r in records if r["task"] == t) for t in ("reach-v3", "push-v3", "pick-place-v3")}
    assert summary["groups"]["easy"]["successes"] == wins["reach-v3"]
    assert summary["groups"]["hard"]["successes"] == wins["push-v3"] + wins["pick-place-v3"]
    assert summary["groups"]["hard"]["n"] == 4
    assert summary["group_mean"]["rate"] == pytest.approx((wins["reach-v3"] / 2 + (wins["push-v3"] + wins["pick-place-v3"]) / 4) / 2)
    assert "Difficulty groups" in (out / "report.html").read_text()

