"""The study's report from evaluation records alone (no training here: the records are written by hand, the way
``lbm eval`` writes them): a folder from the former protocol re-reported through its new bundle, the issue's
6-episode case end to end, a partial study, and Holm across a family of splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openlbm.cli import main
from openlbm.eval.records import CONFIG_FILE
from openlbm.eval.stats import holm

TASK = "reach-v3"


def write_eval(out: Path, run: str, successes: list[bool]) -> None:
    """A complete evaluation of ``run``: one task, initial-state seeds 100, 101, ..."""
    d = out / "runs" / run / "eval"
    d.mkdir(parents=True)
    (d / CONFIG_FILE).write_text(json.dumps({"tasks": [TASK], "planned": len(successes), "policy": run}))
    rows = [{"episode_id": f"{TASK}/{i}", "task": TASK, "seed": 100 + i, "instruction": "reach", "success": ok,
             "steps": 10, "seconds": 0.1, "error": None} for i, ok in enumerate(successes)]
    (d / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def legacy_study(out: Path, counts: list[int], runs: dict[str, list[bool]]) -> None:
    """A study folder as the former protocol left it: study.json without plan or tuning keys, runs, no bundle."""
    out.mkdir(parents=True)
    study = {"pretrained": ["runs/pre"], "tasks": TASK, "dataset": None, "preset": "debug", "steps": 2,
             "batch_size": 4, "eval_episodes_per_task": 6, "eval_seed": 1, "demo_seed": 0, "max_steps": 200,
             "counts": counts, "seeds": [0]}
    (out / "study.json").write_text(json.dumps(study))
    for run, ok in runs.items():
        write_eval(out, run, ok)


def report(out: Path, *extra: str) -> dict:
    assert main(["study", "data-efficiency", "--report-only", "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_the_six_episode_case_is_undetermined_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "six"
    f, t = False, True
    legacy_study(out, [3, 30], {"scratch-n003-s0": [f] * 6, "pre0-n003-s0": [f] * 6,
                                "scratch-n030-s0": [t, t, t, f, f, f], "pre0-n030-s0": [t, t, t, f, f, f]})
    res = report(out)
    m = res["multiplier"]
    assert m["rows"][0]["verdict"] == "undetermined" and m["multiplier"] != 10.0
    # the former rule's one-sided McNemar p = 0.125 "did not reject": the new rule does not read that as "not worse"
    assert m["rows"][0]["a_only"] == 3 and m["rows"][0]["b_only"] == 0
    # a folder from before plans: the plan is the default one, marked as not declared before the runs
    assert res["analysis"]["declared_before_runs"] is False and res["primary"]["status"] == "undetermined"
    assert any("1 training seed" in d for d in res["deviations"])
    assert any("tuned differently" in d for d in res["deviations"])
    page = (out / "report.html").read_text()
    assert "exploratory" in page and "undetermined" in page and "Departures from the published protocol" in page
    # the finished runs were archived into a bundle, and the bundle alone gives the same numbers
    assert (out / "bundle" / "runs" / "pre0-n003-s0" / "eval" / "episodes.jsonl").is_file()
    alone = tmp_path / "alone"
    (alone / "bundle").mkdir(parents=True)
    for f_ in (out / "bundle").rglob("*"):
        if f_.is_file():
            dest = alone / "bundle" / f_.relative_to(out / "bundle")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f_.read_bytes())
    (alone / "bundle" / "study.json").write_text((out / "study.json").read_text())
    rebuilt = report(alone)
    assert rebuilt["multiplier"] == res["multiplier"] and rebuilt["tests"] == res["tests"]


def test_a_partial_study_compares_counts_both_arms_finished(tmp_path: Path) -> None:
    out = tmp_path / "partial"
    ok = [True] * 50 + [False] * 10
    # scratch finished 3 and 30; fine-tuned only 3: the reference is 3, and the report says the study is partial
    legacy_study(out, [3, 30], {"scratch-n003-s0": ok, "pre0-n003-s0": ok, "scratch-n030-s0": [True] * 60})
    res = report(out)
    m = res["multiplier"]
    assert m["reference_count"] == 3 and "partial study" in m["note"] and "planned 30" in m["note"]
    assert m["multiplier"] in (None, 1.0)  # never 0.33x


def test_holm_across_every_count_of_every_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {"scratch-n003-s0": [False] * 30, "pre0-n003-s0": [True] * 12 + [False] * 18,
            "scratch-n010-s0": [False] * 30, "pre0-n010-s0": [True] * 6 + [False] * 24}
    legacy_study(tmp_path / "ml45", [3, 10], runs)
    legacy_study(tmp_path / "easy", [3, 10], {**runs, "pre0-n010-s0": [True] * 3 + [False] * 27})
    own = report(tmp_path / "ml45")
    # a family member is read from its bundle only: one line says how to make it
    assert main(["study", "data-efficiency", "--report-only", "--out", str(tmp_path / "ml45"), "--family",
                 str(tmp_path / "easy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results bundle" in err[0]
    report(tmp_path / "easy")
    res = report(tmp_path / "ml45", "--family", str(tmp_path / "easy"))
    fam = res["family"]
    assert [(r["study"], r["count"]) for r in fam] == [("ml45", 3), ("ml45", 10), ("easy", 3), ("easy", 10)]
    assert [r["p_holm"] for r in fam] == pytest.approx(holm([r["p_value"] for r in fam]))
    assert fam[1]["p_holm"] > own["tests"][1]["p_holm"]  # four tests in the family, not two
    assert "Every count and split" in (tmp_path / "ml45" / "report.html").read_text()
