"""``lbm study data-efficiency`` end to end at toy size: scripted demos with held-out validation demos, the
learning-rate grid for both arms chosen by validation loss, the step rule by demo count, scratch + fine-tuned runs at
two demo counts, a scale point, evaluation on shared initial states, SIGKILL between runs and resume, the declared
analysis plan, the results bundle rebuilt with --report-only, report in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from browser import render_in_chromium
from openlbm.cli import main
from openlbm.configs.presets import debug
from openlbm.data.mixture import SourceConfig
from openlbm.envs.aloha import EMBODIMENT_NAME as ALOHA
from openlbm.envs.generate import GenerateConfig, generate_demos
from openlbm.envs.metaworld import EMBODIMENT_NAME
from openlbm.eval.stats import holm
from openlbm.study.data_efficiency import StudyConfig, episodes_by_task, parse_shard, plan_runs, plan_units
from openlbm.study.plan import check_identity
from openlbm.train.loop import train

TASKS = "button-press-topdown-v3,drawer-close-v3"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug policy 'pretrained' for 4 steps on another task (reach), same camera and image size as the study."""
    root = tmp_path_factory.mktemp("pre")
    data = generate_demos(GenerateConfig(out=root / "data", tasks="reach-v3", episodes_per_task=2, cameras=("corner2",),
                                         size=32, max_steps=100, workers=2, progress=False))
    cfg = replace(debug(), run_dir=root / "run", steps=4,
                  data=replace(debug().data, sources=(SourceConfig(root=data),)))
    return train(cfg)


def _args(out: Path, pre: Path) -> list[str]:
    return ["study", "data-efficiency", "--pretrained", str(pre), str(pre / "checkpoints" / "step_00000002"),
            "--scale-labels", "4 steps", "2 steps", "--out", str(out), "--tasks", TASKS, "--counts", "1", "2",
            "--seeds", "0", "--preset", "debug", "--epochs", str(EPOCHS), "--batch-size", "4", "--val-demos-per-task",
            "1", "--eval-episodes-per-task", "2", "--max-steps", "100", "--workers", "2", "--device", "cpu"]


EPOCHS = 0.05
"""Passes over each run's demo frames: 1-3 optimizer steps at batch 4, more at 2 demos/task than at 1."""


def test_plan_and_shards() -> None:
    cfg = StudyConfig(pretrained=(Path("a"), Path("b")), counts=(3, 10), seeds=(0, 1), lr_grid=(1e-4, 3e-4))
    runs = [r.name for r in plan_runs(cfg)]
    assert runs[:4] == ["scratch-n003-s0", "pre0-n003-s0", "scratch-n010-s0", "pre0-n010-s0"]
    assert "pre1-n003-s1" in runs and len(runs) == len(set(runs)) == 10
    # the grid comes first (every arm and count, both rates), so a seed run never waits on its own shard
    units = [u.name for u in plan_units(cfg)]
    assert units[:2] == ["scratch-n003-lr0", "scratch-n003-lr1"] and len(units) == 10 + 5 * 2
    assert units[10:] == runs
    assert plan_units(replace(cfg, lr_grid=(1e-4,)))[0].name == "scratch-n003-s0"  # one rate: nothing to tune
    assert StudyConfig(pretrained=(Path("a"),)).seeds == (0, 1, 2)  # the protocol's default: three seeds
    with pytest.raises(ValueError, match="validation demos"):
        StudyConfig(pretrained=(Path("a"),), val_demos_per_task=0)
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("1-4")


def test_pretrained_policies_may_be_appended_to_a_study(tmp_path: Path) -> None:
    cfg = StudyConfig(pretrained=(Path("a"),), out=tmp_path / "study", counts=(3, 10))
    check_identity(cfg)
    check_identity(replace(cfg, counts=(3, 10, 30)))  # more counts: fine
    bigger = replace(cfg, pretrained=(Path("a"), Path("b")))
    check_identity(bigger)  # a scale point appended: recorded
    assert json.loads((tmp_path / "study" / "study.json").read_text())["pretrained"] == ["a", "b"]
    for other in (cfg, replace(cfg, pretrained=(Path("b"), Path("a"))), replace(bigger, steps=7),
                  replace(bigger, lr_grid=(1e-3,)), replace(bigger, epochs=3.0)):
        with pytest.raises(ValueError, match="other settings"):  # dropped, reordered, another budget or tuning
            check_identity(other)


def test_the_analysis_plan_is_declared_before_the_runs(tmp_path: Path) -> None:
    cfg = StudyConfig(pretrained=(Path("a"),), out=tmp_path / "study", counts=(3, 10, 30))
    check_identity(cfg)
    plan = json.loads((cfg.out / "study.json").read_text())["analysis"]
    assert plan["primary"] == "noninferiority" and (plan["finetuned_count"], plan["scratch_count"]) == (10, 30)
    assert plan["delta"] == 0.10 and plan["declared_before_runs"] is True
    assert json.loads((cfg.out / "bundle" / "study.json").read_text()) == json.loads((cfg.out / "study.json").read_text())
    (cfg.out / "runs").mkdir()
    check_identity(replace(cfg, counts=(3, 10, 30, 100), seeds=(0, 1, 2, 3)))  # more counts: the plan stays as declared
    study = json.loads((cfg.out / "study.json").read_text())
    assert study["analysis"]["scratch_count"] == 30 and study["counts"] == [3, 10, 30, 100] and len(study["seeds"]) == 4
    for moved in (replace(cfg, delta=0.05), replace(cfg, alpha=0.1), replace(cfg, primary="superiority"),
                  replace(cfg, primary_count=3)):
        with pytest.raises(ValueError, match="analysis plan"):
            check_identity(moved)
    # a folder from before analysis plans gets one, marked as declared after its runs
    legacy = {k: v for k, v in study.items() if k != "analysis"}
    (cfg.out / "study.json").write_text(json.dumps(legacy))
    check_identity(cfg)
    assert json.loads((cfg.out / "study.json").read_text())["analysis"]["declared_before_runs"] is False


def test_study_end_to_end_with_kill_and_resume(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "openlbm.cli", *_args(out, pretrained)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "runs" / "scratch-n001-s0"
    deadline = time.monotonic() + 600
    while not (first / "eval" / "summary.json").exists():
        if proc.poll() is not None:
            raise AssertionError(f"study subprocess exited early:\n{proc.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the first run did not finish"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # between runs: the first is done, the second may be mid-training
    proc.wait()
    first_records = (first / "eval" / "episodes.jsonl").read_bytes()
    first_ckpt = (first / "train" / "checkpoints" / "latest").stat().st_mtime_ns
    assert not (out / "report.html").exists()

    assert main(_args(out, pretrained)) == 0
    # The finished run was skipped, not redone.
    assert (first / "eval" / "episodes.jsonl").read_bytes() == first_records
    assert (first / "train" / "checkpoints" / "latest").stat().st_mtime_ns == first_ckpt

    check_finished_study(out, tmp_path)


def test_a_study_on_a_new_embodiment(pretrained: Path, tmp_path: Path) -> None:
    """Meta-World-pretrained -> ALOHA: the fine-tuned arm keeps the shared weights and starts ALOHA's projections
    fresh, both arms share the architecture, demos and evaluation are ALOHA's."""
    out = tmp_path / "study"
    args = ["study", "data-efficiency", "--pretrained", str(pretrained), "--out", str(out), "--suite", "aloha",
            "--tasks", "transfer-cube", "--cameras", "top", "--image-size", "32", "--counts", "1", "--preset", "debug",
            "--steps", "2", "--batch-size", "4", "--eval-episodes-per-task", "1", "--workers", "1", "--device", "cpu",
            "--seeds", "0", "1", "--lr-grid", "1e-3", "--val-demos-per-task", "0"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in res["runs"]] == ["scratch-n001-s0", "pre0-n001-s0", "scratch-n001-s1", "pre0-n001-s1"]
    assert all(r["done"] for r in res["runs"]) and all(r["lr"] == 1e-3 for r in res["runs"])
    # two training seeds: the interval is the bootstrap over seeds and initial states, and the spread is printed
    test = res["tests"][0]
    assert "bootstrap over 2 training seeds" in test["difference"]["method"]
    assert set(test["spread"]["scratch"]["per_seed"]) == {"0", "1"} and test["spread"]["scratch"]["sd"] is not None
    report = json.loads((out / "runs" / "pre0-n001-s0" / "train" / "init_report.json").read_text())
    assert report["source_embodiments"] == [EMBODIMENT_NAME] and report["stats_from"] == {ALOHA: [str(out / "data")]}
    assert report["loaded"] and report["new"] and all(ALOHA in k for k in report["new"])
    assert report["dropped"] and all(EMBODIMENT_NAME in k for k in report["dropped"])
    scratch = json.loads((out / "runs" / "scratch-n001-s0" / "train" / "config.json").read_text())
    finetuned = json.loads((out / "runs" / "pre0-n001-s0" / "train" / "config.json").read_text())
    assert scratch["policy"] == finetuned["policy"]
    for run in ("scratch-n001-s0", "pre0-n001-s0"):
        ev = json.loads((out / "runs" / run / "eval" / "eval_config.json").read_text())
        assert ev["suite"] == "aloha" and ev["max_steps"] == 400
    assert json.loads((out / "study.json").read_text())["suite"] == "aloha"
    with pytest.raises(ValueError, match="other settings"):  # the same folder cannot switch suites
        check_identity(StudyConfig(pretrained=(pretrained,), out=out, tasks="transfer-cube", cameras=("top",),
                                   image_size=32, preset="debug", steps=2, batch_size=4, eval_episodes_per_task=1,
                                   lr_grid=(1e-3,), val_demos_per_task=0))


def test_a_folder_from_before_the_suite_option_still_resumes(tmp_path: Path) -> None:
    cfg = StudyConfig(pretrained=(Path("a"),), out=tmp_path / "study")
    check_identity(cfg)
    legacy = json.loads((cfg.out / "study.json").read_text())
    assert legacy["max_steps"] == 200  # Meta-World's default, resolved
    for key in ("suite", "cameras", "image_size"):
        legacy.pop(key)
    (cfg.out / "study.json").write_text(json.dumps(legacy))
    check_identity(replace(cfg, max_steps=200))
    with pytest.raises(ValueError, match="other settings"):
        check_identity(replace(cfg, suite="aloha", tasks="aloha"))


def check_finished_study(out: Path, tmp_path: Path) -> None:
    res = json.loads((out / "results.json").read_text())
    assert all(r["done"] for r in res["runs"]) and len(res["runs"]) == 5
    # Every run evaluated on the same initial states.
    seeds = {r["run"]: sorted((json.loads(x)["task"], json.loads(x)["seed"])
                              for x in (out / "runs" / r["run"] / "eval" / "episodes.jsonl").read_text().splitlines())
             for r in res["runs"]}
    assert len({tuple(v) for v in seeds.values()}) == 1 and len(next(iter(seeds.values()))) == 4
    # Nested demo subsets, by episode selection of the one generated dataset; both arms get the same demos.
    configs = {r["run"]: json.loads((out / "runs" / r["run"] / "train" / "config.json").read_text()) for r in res["runs"]}
    eps = {name: c["data"]["sources"][0]["episodes"] for name, c in configs.items()}
    assert eps["scratch-n001-s0"] == eps["pre0-n001-s0"] and len(eps["scratch-n001-s0"]) == 2
    assert set(eps["scratch-n001-s0"]) < set(eps["scratch-n002-s0"]) and len(eps["scratch-n002-s0"]) == 4
    by_task = episodes_by_task(out / "data")
    assert set(eps["scratch-n001-s0"]) == {by_task[t][0] for t in TASKS.split(",")}
    # The validation demo of each task (its last) is never trained on.
    held = {by_task[t][-1] for t in TASKS.split(",")}
    assert all(len(by_task[t]) == 3 for t in TASKS.split(",")) and not held & set(eps["scratch-n002-s0"])
    _check_equal_tuning(out, res, configs)
    # Fine-tuned runs start from the pretrained weights and keep its normalization (a known embodiment).
    report = json.loads((out / "runs" / "pre0-n002-s0" / "train" / "init_report.json").read_text())
    assert report["loaded"] and not report["new"] and report["stats"] == {EMBODIMENT_NAME: "pretrained"}
    assert not (out / "runs" / "scratch-n002-s0" / "train" / "init_report.json").exists()
    # The report's statistics: the declared primary endpoint, one paired comparison per count, the multiplier by
    # non-inferiority with its rule, the scale curve.
    assert res["analysis"]["declared_before_runs"] is True and res["primary"]["endpoint"] == "noninferiority"
    assert res["primary"]["status"] in ("non-inferior", "inferior", "undetermined")
    assert (res["primary"]["finetuned_count"], res["primary"]["scratch_count"]) == (1, 2)
    assert [t["count"] for t in res["tests"]] == [1, 2] and all(t["pairs"] == 4 for t in res["tests"])
    assert "ignores training-run variation" in res["tests"][0]["difference"]["method"]  # one seed, and it says so
    m = res["multiplier"]
    assert m["reference_count"] == 2 and "non-inferior" in res["multiplier_rule"] and len(m["rows"]) == 2
    assert all(r["verdict"] in ("non-inferior", "inferior", "undetermined") for r in m["rows"])
    assert res["multiplier_control"]["reference_count"] == 2 and len(res["multiplier_control"]["rows"]) == 2
    assert [p["label"] for p in res["scale"]["points"]] == ["scratch (no pretraining)", "4 steps", "2 steps"]
    assert all(p["rate"]["n"] == 4 for p in res["scale"]["points"])
    assert [p["vs_scratch"]["pairs"] for p in res["scale"]["points"][1:]] == [4, 4]
    page = (out / "report.html").read_text()
    assert "Primary endpoint" in page and "Data multiplier" in page and "Control: scratch" in page
    assert "Pretraining scale" in page and "http://" not in page
    _check_bundle_rebuilds_the_report(out, res, tmp_path)
    _check_chromium(out / "report.html", tmp_path)


def _check_equal_tuning(out: Path, res: dict, configs: dict) -> None:
    """Both arms: the same grid, chosen by validation loss, the same step rule and warmup; the seed-0 run is the
    chosen grid point itself (moved, not retrained)."""
    tune = out / "runs" / "tune"
    for arm, n in (("scratch", 1), ("pre0", 1), ("scratch", 2), ("pre0", 2), ("pre1", 1)):
        sel = json.loads((tune / f"{arm}-n{n:03d}.json").read_text())
        assert sel["rates"] == pytest.approx([1e-3 / 3, 1e-3]) and len(sel["val_loss"]) == 2
        assert sel["lr"] == sel["rates"][min(range(2), key=lambda k: sel["val_loss"][k])]
        name = f"{arm}-n{n:03d}-s0"
        if name in configs:
            assert configs[name]["optim"]["lr"] == pytest.approx(sel["lr"])
            assert not (tune / f"{arm}-n{n:03d}-lr{sel['index']}").exists()  # moved into place
        assert (out / "bundle" / "tuning" / f"{arm}-n{n:03d}.json").is_file()
    for n in (1, 2):
        a, b = configs[f"scratch-n{n:03d}-s0"], configs[f"pre0-n{n:03d}-s0"]
        assert (a["steps"], a["optim"]["warmup_steps"]) == (b["steps"], b["optim"]["warmup_steps"])
    assert configs["scratch-n002-s0"]["steps"] > configs["scratch-n001-s0"]["steps"]  # more demos, more steps
    for r in res["runs"]:
        steps = configs[r["run"]]["steps"]
        assert (out / "runs" / r["run"] / "train" / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"


def _check_bundle_rebuilds_the_report(out: Path, res: dict, tmp_path: Path) -> None:
    """The bundle alone (no runs, no demos, no pretrained policies, no arguments) rebuilds every number; a second
    split joins the Holm family of every count."""
    alone = tmp_path / "alone"
    shutil.copytree(out / "bundle", alone / "bundle")
    assert main(["study", "data-efficiency", "--report-only", "--out", str(alone)]) == 0
    rebuilt = json.loads((alone / "results.json").read_text())
    assert {k: v for k, v in rebuilt.items() if k != "family"} == {k: v for k, v in res.items() if k != "family"}
    assert [r["p_holm"] for r in rebuilt["family"]] == [r["p_holm"] for r in res["family"]]
    assert main(["study", "data-efficiency", "--report-only", "--out", str(alone), "--family", str(out)]) == 0
    fam = json.loads((alone / "results.json").read_text())["family"]
    assert len(fam) == 4 and [r["p_holm"] for r in fam] == pytest.approx(holm([r["p_value"] for r in fam]))


def _check_chromium(report: Path, tmp_path: Path) -> None:
    result, dom = render_in_chromium(report, tmp_path, budget_ms=3000)
    # success-vs-demos curves, scale curve, training curves: every image decoded
    assert len(result["imgs"]) >= 3 and all(w > 0 for w in result["imgs"])
    assert "Data multiplier" in dom and "pre0-n002-s0" in dom
