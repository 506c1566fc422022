"""The study's results bundle and its declared analysis plan.

``out/bundle/`` is what a study's numbers are rebuilt from: everything the report reads and nothing it does not
(no checkpoints, no videos, no demos), small enough to archive next to a paper::

    bundle/study.json                    the study's settings, counts, seeds and the analysis plan (declared
                                         before the first run; a copy of out/study.json)
    bundle/runs/<run>/train/config.json  the run's full TrainConfig (learning rate, steps, demos, seed)
    bundle/runs/<run>/train/init_report.json, metrics.jsonl, validation.json   (whichever exist)
    bundle/runs/<run>/eval/eval_config.json, episodes*.jsonl, summary.json    the per-episode records
    bundle/tuning/<arm>-n<count>.json     the learning-rate selection (validation losses of the grid)

A run is archived once its evaluation is complete, so the bundle only ever holds finished runs, each one copied
whole or not at all (a crash leaves at most a temporary folder, replaced on the next run). ``lbm study
data-efficiency --report-only --out DIR`` rebuilds ``results.json`` and ``report.html`` from ``DIR/bundle`` alone:
the run folders, the demos and the pretrained policies may be gone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from openlbm.eval.records import CONFIG_FILE, SUMMARY_FILE, EvalSummary, load_records

BUNDLE_DIR = "bundle"
STUDY_FILE = "study.json"
TRAIN_FILES = ("config.json", "init_report.json", "metrics.jsonl", "validation.json")


def bundle_dir(out: Path) -> Path:
    return Path(out) / BUNDLE_DIR


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # shards may write at the same time
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def archive_run(out: Path, name: str) -> Path:
    """Copy run ``name``'s configs, training log and per-episode records into the bundle (idempotent)."""
    src = Path(out) / "runs" / name
    dest = bundle_dir(out) / "runs" / name
    if (dest / "eval" / CONFIG_FILE).is_file():
        return dest
    tmp = dest.with_name(f".{name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    for f in TRAIN_FILES:
        if (src / "train" / f).is_file():
            shutil.copy2(src / "train" / f, tmp / "train" / f)
    (tmp / "eval").mkdir()
    for f in [CONFIG_FILE, SUMMARY_FILE, *(p.name for p in (src / "eval").glob("episodes*.jsonl"))]:
        if (src / "eval" / f).is_file():
            shutil.copy2(src / "eval" / f, tmp / "eval" / f)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def archived_eval(out: Path, name: str) -> Path | None:
    """The bundle's eval dir of run ``name``, when it holds a complete evaluation."""
    d = bundle_dir(out) / "runs" / name / "eval"
    if not (d / CONFIG_FILE).is_file():
        return None
    return d if EvalSummary.load(d).complete else None


def archived_outcomes(eval_dir: Path) -> dict[str, dict[int, bool]]:
    """task -> {initial-state seed -> success} of one archived evaluation."""
    outcomes: dict[str, dict[int, bool]] = {}
    for r in load_records(eval_dir):
        outcomes.setdefault(str(r["task"]), {})[int(r["seed"])] = bool(r["success"])
    return outcomes


def read_study(out: Path) -> dict[str, Any]:
    """The study's ``study.json``: the folder's own, else the bundle's (a bundle copied on its own)."""
    for path in (Path(out) / STUDY_FILE, bundle_dir(out) / STUDY_FILE):
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"{out} holds no study: neither {STUDY_FILE} nor {BUNDLE_DIR}/{STUDY_FILE} (is --out the "
                            "study folder, or a folder holding its bundle/?)")


def write_study(out: Path, study: dict[str, Any]) -> None:
    """``study.json`` in the study folder and in its bundle."""
    write_json_atomic(Path(out) / STUDY_FILE, study)
    write_json_atomic(bundle_dir(out) / STUDY_FILE, study)
