"""The study's identity and its declared analysis plan, kept in ``study.json``.

A study folder's settings (what every run was trained and evaluated with) and its analysis plan (primary endpoint,
margin, confidence, alpha) are written on the first invocation, before any run, and a re-run must agree with them:
a re-run with other settings is refused, and so is a change of plan after the fact. Counts and seeds may be added;
pretrained policies may be appended (a scale point added later reuses every finished run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openlbm.study.data_efficiency import StudyConfig

_ADDED_IDENTITY: dict[str, Any] = {"suite": "metaworld", "cameras": None, "image_size": None, "epochs": None,
                                   "val_demos_per_task": 0, "lr_grid": "per-arm presets (the former protocol)"}
"""Identity keys a study folder written before they existed lacks, with the value that folder ran with."""


PLAN_KEYS = ("primary", "delta", "confidence", "alpha")
"""Analysis-plan settings a re-run must agree on once declared (the declared counts stay as declared)."""


def check_identity(cfg: StudyConfig) -> None:
    """Refuse a folder holding a study with other settings or another analysis plan; record the counts and seeds.

    Pretrained policies may be appended (a new scale point reuses the finished runs); the ones there keep their
    order, since run names ``pre<i>`` index them. Counts and seeds may be added. The analysis plan is declared on
    the first write and never changes afterwards; a folder from before plans existed gets one now, marked
    ``declared_before_runs: false``."""
    from openlbm.study.bundle import STUDY_FILE, write_study

    path = cfg.out / STUDY_FILE
    ident, plan = cfg.identity(), cfg.analysis_plan()
    counts, seeds, declared = set(cfg.counts), set(cfg.seeds), not (cfg.out / "runs").is_dir()
    old: dict[str, Any] = {}
    if path.is_file():
        old = {**_ADDED_IDENTITY, **json.loads(path.read_text())}
        before = old.get("pretrained") or []
        changed = {k: (old.get(k), v) for k, v in ident.items() if k != "pretrained" and old.get(k) != v}
        if ident["pretrained"][: len(before)] != before:
            changed["pretrained"] = (before, ident["pretrained"])
        if changed:
            raise ValueError(f"{cfg.out} holds a study with other settings {changed} (old, new); use another --out "
                             "(pretrained policies may only be appended)")
        if old.get("analysis"):
            old_plan = old["analysis"]
            moved = {k: (old_plan[k], plan[k]) for k in PLAN_KEYS if old_plan.get(k) != plan[k]}
            if cfg.primary_count is not None and cfg.primary_count != old_plan["finetuned_count"]:
                moved["primary_count"] = (old_plan["finetuned_count"], cfg.primary_count)
            if moved:
                raise ValueError(f"{cfg.out}: the analysis plan was declared before the runs and cannot change "
                                 f"{moved} (declared, new); use another --out")
            plan, declared = old_plan, bool(old_plan.get("declared_before_runs"))
        counts |= set(old.get("counts", [])) | set(cfg.counts)
        seeds |= set(old.get("seeds", []))
    cfg.out.mkdir(parents=True, exist_ok=True)
    labels = list(cfg.scale_labels) or old.get("scale_labels", [])
    write_study(cfg.out, {**ident, "counts": sorted(counts), "seeds": sorted(seeds), "scale_labels": labels,
                          "analysis": {**plan, "declared_before_runs": declared}})


def config_from_study(out: Path, **overrides: Any) -> StudyConfig:
    """The study's settings as ``study.json`` (the folder's, else its bundle's) records them: what
    ``--report-only`` uses when no ``--pretrained`` is given."""
    from openlbm.study.bundle import read_study

    st = read_study(out)
    plan = st.get("analysis") or {}
    keep = ("tasks", "suite", "cameras", "image_size", "preset", "steps", "batch_size", "eval_episodes_per_task",
            "eval_seed", "demo_seed", "max_steps", "epochs", "val_demos_per_task")
    fields = {k: st[k] for k in keep if k in st}
    if st.get("scale_labels"):
        fields["scale_labels"] = tuple(st["scale_labels"])
    if isinstance(st.get("lr_grid"), list):  # a folder from the former protocol had per-arm presets instead
        fields["lr_grid"] = tuple(st["lr_grid"])
    if fields.get("cameras") is not None:
        fields["cameras"] = tuple(fields["cameras"])
    plan_fields = {k: plan[k] for k in PLAN_KEYS if k in plan}
    if "finetuned_count" in plan:
        plan_fields["primary_count"] = plan["finetuned_count"]
    return StudyConfig(
        pretrained=tuple(Path(p) for p in st["pretrained"]), out=Path(out), counts=tuple(st.get("counts") or (1,)),
        seeds=tuple(st.get("seeds") or (0,)), dataset=Path(st["dataset"]) if st.get("dataset") else None,
        **fields, **plan_fields, **{"report_only": True, **overrides},
    )
