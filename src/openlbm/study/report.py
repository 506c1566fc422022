"""The study's ``results.json`` and ``report.html`` (same self-contained style as ``openlbm.eval.report``: plots as
base64 PNG, no network). Written from whatever runs have finished; missing runs are listed as such."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from openlbm.eval.html import CSS, ci, pct, png_img, pyplot, read_metrics, training_curves
from openlbm.eval.records import EvalSummary
from openlbm.eval.stats import RateEstimate
from openlbm.study import analysis as A
from openlbm.study.bundle import archived_eval, archived_outcomes, bundle_dir, read_study
from openlbm.study.data_efficiency import Run, StudyConfig, plan_runs

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"


def collect(cfg: StudyConfig) -> tuple[dict[str, dict[int, A.Pooled]], list[dict[str, Any]], list[str]]:
    """arm -> count -> pooled outcomes of the runs in the bundle (a count counts once every seed has finished), the
    run table, and the tasks. Reads only the bundle (:mod:`openlbm.study.bundle`)."""
    per: dict[str, dict[int, dict[int, dict[str, dict[int, bool]]]]] = {}
    table, tasks = [], []
    for run in plan_runs(cfg):
        out = archived_eval(cfg.out, run.name)
        table.append({"run": run.name, "arm": run.arm, "count": run.count, "seed": run.seed, "done": out is not None})
        if out is None:
            continue
        summary = EvalSummary.load(out)
        tasks = tasks or list(summary.tasks)
        table[-1]["success"] = summary.overall.to_dict()
        train_cfg = out.parent / "train" / "config.json"
        if train_cfg.is_file():
            tc = json.loads(train_cfg.read_text())
            table[-1] |= {"lr": tc["optim"]["lr"], "steps": tc["steps"], "warmup": tc["optim"]["warmup_steps"]}
        per.setdefault(run.arm, {}).setdefault(run.count, {})[run.seed] = archived_outcomes(out)
    pooled = {
        arm: {n: A.pool(seeds) for n, seeds in counts.items() if set(seeds) == set(cfg.seeds)}
        for arm, counts in per.items()
    }
    return pooled, table, tasks


def analyse(cfg: StudyConfig, family: bool = True) -> dict[str, Any]:
    """Every number of the report, from the bundle and the analysis plan declared in ``study.json``."""
    pooled, table, tasks = collect(cfg)
    plan = read_study(cfg.out).get("analysis") or {**cfg.analysis_plan(), "declared_before_runs": False}
    delta, conf, alpha = float(plan["delta"]), float(plan["confidence"]), float(plan["alpha"])
    scratch, pre0 = pooled.get("scratch", {}), pooled.get("pre0", {})
    main_counts = set(cfg.counts)
    scratch_main = {n: o for n, o in scratch.items() if n in main_counts}
    pre_main = {n: o for n, o in pre0.items() if n in main_counts}
    mult = A.data_multiplier(scratch_main, pre_main, delta, conf, max(cfg.counts))
    control = A.control_multiplier({n: o for n, o in scratch_main.items() if mult and n <= mult.reference_count},
                                   delta, conf, max(cfg.counts))
    scale = None
    if len(cfg.pretrained) > 1:
        n = cfg.scale_at
        points = [{"label": "scratch (no pretraining)", "arm": "scratch", **_maybe_rate(scratch.get(n))}]
        for i, label in enumerate(cfg.labels()):
            outcomes = pooled.get(f"pre{i}", {}).get(n)
            points.append({"label": label, "arm": f"pre{i}", **_maybe_rate(outcomes),
                           "vs_scratch": A.paired_vs_scratch(scratch.get(n), outcomes, conf)})
        scale = {"count": n, "points": points}
    tests = [t.to_dict() for t in A.count_tests(scratch_main, pre_main, alpha, conf)]
    res = {
        "config": {**cfg.identity(), "counts": list(cfg.counts), "seeds": list(cfg.seeds)},
        "analysis": plan,
        "primary": A.primary_result(plan, scratch, pre0),
        "tasks": tasks,
        "runs": table,
        "curves": {"scratch": A.curve(scratch_main, tasks), "finetuned": A.curve(pre_main, tasks)},
        "tests": tests,
        "multiplier": mult.to_dict() if mult is not None else None,
        "multiplier_rule": A.RULE.format(delta=delta, confidence=conf),
        "multiplier_control": control.to_dict() if control is not None else None,
        "scale": scale,
    }
    res["deviations"] = deviations(cfg, plan, read_study(cfg.out))
    if family:
        res["family"] = _family(cfg, tests)
    return res


PROTOCOL_MIN_SEEDS = 3
"""Training seeds per arm and count that the published protocol asks for (docs/pretraining.md)."""


def deviations(cfg: StudyConfig, plan: dict[str, Any], study: dict[str, Any]) -> list[str]:
    """How this study departs from the published protocol, in words (printed at the top of the report)."""
    out = []
    if len(cfg.seeds) < PROTOCOL_MIN_SEEDS:
        out.append(f"{len(cfg.seeds)} training seed(s) per arm and count; the protocol asks for at least "
                   f"{PROTOCOL_MIN_SEEDS}")
    if not plan.get("declared_before_runs"):
        out.append("the analysis plan was declared after runs had finished")
    grid = study.get("lr_grid")
    if not isinstance(grid, list):
        out.append("the arms were tuned differently (per-arm preset learning rates: the former protocol)")
    elif len(grid) < 2:
        out.append(f"no learning-rate selection: both arms at {grid[0]:g}")
    return out


def _family(cfg: StudyConfig, tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every count of this study and of ``cfg.family``'s studies, Holm-corrected together."""
    from openlbm.study.plan import config_from_study

    rows = [{"study": cfg.out.name, "count": t["count"], "p_value": t["p_value"]} for t in tests]
    for other in cfg.family:
        if not (bundle_dir(other) / "runs").is_dir():
            raise ValueError(f"--family {other}: no results bundle there yet (run `lbm study data-efficiency "
                             f"--report-only --out {other}` once to archive its finished runs)")
        res = analyse(config_from_study(other), family=False)
        rows += [{"study": Path(other).name, "count": t["count"], "p_value": t["p_value"]} for t in res["tests"]]
    for row, q in zip(rows, A.family_holm(rows), strict=True):
        row["p_holm"] = q
    return rows


def _maybe_rate(o: A.Pooled | None) -> dict[str, Any]:
    return {"rate": A.rate(o).to_dict()} if o else {"rate": None}


# -- plots ---------------------------------------------------------------------------------------------------------
def _curve_plot(curves: dict[str, dict[int, dict[str, Any]]], names: list[str]) -> str:
    plt = pyplot()
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for arm, style in (("scratch", "o--"), ("finetuned", "s-")):
            pts = [(n, RateEstimate.from_dict(c[name])) for n, c in sorted(curves[arm].items()) if c[name]["n"]]
            if not pts:
                continue
            xs = [n for n, _ in pts]
            ys = [e.rate for _, e in pts]
            err = [[y - e.wilson[0] for y, (_, e) in zip(ys, pts, strict=True)],
                   [e.wilson[1] - y for y, (_, e) in zip(ys, pts, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, ms=4, lw=1.2, label=arm)
        ax.set_xscale("log")
        counts = sorted({n for arm in curves.values() for n in arm})
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(name.removesuffix("-v3"), fontsize=9)
        ax.set_xlabel("demos per task", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return png_img(fig)


def _scale_plot(scale: dict[str, Any]) -> str:
    plt = pyplot()
    pts = [(p["label"], RateEstimate.from_dict(p["rate"])) for p in scale["points"] if p["rate"]]
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(1.2 * len(pts) + 2.5, 3.0))
    ys = [e.rate for _, e in pts]
    err = [[y - e.wilson[0] for y, (_, e) in zip(ys, pts, strict=True)],
           [e.wilson[1] - y for y, (_, e) in zip(ys, pts, strict=True)]]
    ax.errorbar(range(len(pts)), ys, yerr=err, fmt="o-", capsize=3)
    ax.set_xticks(range(len(pts)), [label for label, _ in pts], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(f"success at {scale['count']} demos/task", fontsize=8)
    return png_img(fig)


# -- tables --------------------------------------------------------------------------------------------------------
def _scale_table(scale: dict[str, Any]) -> str:
    rows = []
    for p in scale["points"]:
        t = p.get("vs_scratch")
        test = (f"<td>{t['scratch_only']}/{t['finetuned_only']} of {t['pairs']}</td>"
                f"<td>{_interval(t['difference'])}</td><td>{t['p_value']:.3g}</td>" if t else "<td>–</td>" * 3)
        rows.append(f"<tr><td>{html.escape(p['label'])}</td>{_rate_cell(p['rate'])}{test}</tr>")
    return ("<p class=muted>Each point against scratch at the same count, episodes paired by training seed, task and "
            "initial state; two-sided paired test (as in the table of counts), uncorrected.</p><table><tr><th>pretraining"
            "</th><th>success</th><th>Wilson 95%</th><th>only scratch / only fine-tuned</th><th>Δ pp (interval)</th>"
            "<th>p</th></tr>"
            + "".join(rows) + "</table>")


def _rate_cell(d: dict[str, Any] | None) -> str:
    if not d or not d["n"]:
        return "<td>–</td><td>–</td>"
    return f"<td>{d['successes']}/{d['n']} ({pct(d['rate'])})</td><td>{ci(d['wilson'])}</td>"


def _interval(d: dict[str, Any]) -> str:
    lo, hi = d["interval"]
    return f"{100 * d['estimate']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def _spread(sp: dict[str, Any]) -> str:
    rates = ", ".join(pct(r) for r in sp["per_seed"].values())
    return f"{rates}" + (f"; sd {100 * sp['sd']:.1f} pp" if sp["sd"] is not None else "; one seed")


def _tests_table(res: dict[str, Any]) -> str:
    rows = []
    for t in res["tests"]:
        d = t["difference"]
        rows.append(f"<tr><td>{t['count']}</td>{_rate_cell(t['scratch'])}{_rate_cell(t['finetuned'])}"
                    f"<td>{_interval(d)}</td><td>{t['scratch_only']}/{t['finetuned_only']} of {t['pairs']}</td>"
                    f"<td>{t['p_value']:.3g}</td><td>{t['p_holm']:.3g}</td><td>{d['p_mcnemar']:.3g}</td>"
                    f"<td>{_spread(t['spread']['scratch'])}</td><td>{_spread(t['spread']['finetuned'])}</td></tr>")
    if not rows:
        return "<p class=muted>No count has both arms finished yet.</p>"
    method = html.escape(res["tests"][0]["difference"]["method"])
    return (f"<p class=muted>Difference and p-value: {method}.</p>"
            "<table><tr><th>demos/task</th><th>scratch</th><th>Wilson 95%</th><th>fine-tuned</th><th>Wilson 95%</th>"
            "<th>Δ pp (interval)</th><th>only scratch / only fine-tuned</th><th>p</th><th>p Holm (counts)</th>"
            "<th>p McNemar, episodes as independent</th><th>scratch per seed</th><th>fine-tuned per seed</th></tr>"
            + "".join(rows) + "</table>")


def _per_task_tables(res: dict[str, Any]) -> str:
    parts = []
    for t in res["tests"]:
        rows = "".join(
            f"<tr><td>{html.escape(r['task'])}</td><td>{pct(r['a']['rate'])}</td><td>{pct(r['b']['rate'])}</td>"
            f"<td>{r['a_only']}/{r['b_only']}</td><td>{r['p_value']:.3g}</td><td>{r['p_adjusted']:.3g}</td>"
            f"<td class=\"{r['verdict'].split()[0]}\">{r['verdict']}</td></tr>"
            for r in t["per_task"]
        )
        parts.append(f"<h3>{t['count']} demos per task</h3><table><tr><th>task</th><th>scratch</th><th>fine-tuned</th>"
                     f"<th>only scratch / only fine-tuned</th><th>p</th><th>p Holm (tasks)</th><th>verdict</th></tr>"
                     f"{rows}</table>")
    return "".join(parts)


def _multiplier_section(res: dict[str, Any]) -> str:
    m = res["multiplier"]
    rule = f"<p class=muted>Rule: {html.escape(res['multiplier_rule'])}.</p>"
    if m is None:
        return "<p>Not available yet: no count has both arms finished.</p>" + rule
    if m["smallest_count"]:
        why = (f"fine-tuned with {m['smallest_count']} demos/task is non-inferior to scratch with "
               f"{m['reference_count']}" + (f"; {m['note']}" if m["note"] else ""))
    else:
        why = m["note"]
    head = (f"<p><b>Data multiplier: {_times(m)}</b> — {html.escape(why)} (scratch@{m['reference_count']}: "
            f"{pct(m['reference']['rate'])} {ci(m['reference']['wilson'])}).</p>")
    rows = "".join(
        f"<tr><td>{r['count']}</td>{_rate_cell(r['finetuned'])}<td>{r['a_only']}/{r['b_only']} of {r['pairs']}</td>"
        f"<td>{_interval(r)}</td><td>{r['verdict']}</td></tr>"
        for r in m["rows"]
    )
    return (head + _control_line(res.get("multiplier_control")) + rule
            + "<table><tr><th>fine-tuned demos/task</th><th>fine-tuned</th><th>Wilson 95%</th>"
            "<th>only scratch@N / only fine-tuned</th><th>Δ pp vs scratch@N (interval)</th><th>verdict</th></tr>"
            + rows + "</table>")


def _times(m: dict[str, Any]) -> str:
    if m["multiplier"] is None:
        return m["status"]
    value = f"{m['multiplier']:.3g}×"
    return f"at least {value}" if m["status"] == "lower bound" else value


def _control_line(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    passing = ", ".join(str(r["count"]) for r in c["rows"] if r["verdict"] == "non-inferior")
    return (f"<p><b>Control: scratch's own multiplier by the same rule: {_times(c)}</b> (scratch@n non-inferior to "
            f"scratch@{c['reference_count']} at n = {html.escape(passing or 'none')}). Only a data multiplier above "
            "this control is evidence of what pretraining buys.</p>")


def _primary_section(res: dict[str, Any]) -> str:
    plan, p = res["analysis"], res["primary"]
    when = ("declared in study.json before the first run" if plan.get("declared_before_runs")
            else "declared after runs had finished (a study from before analysis plans): read it as exploratory")
    result = html.escape(p["status"])
    if "difference" in p:
        result += f": Δ {_interval(p['difference'])} pp, p {p['difference']['p_value']:.3g}"
    return (f"<p><b>Primary endpoint</b> ({html.escape(when)}): {html.escape(plan['statement'])}.</p>"
            f"<p><b>Result: {result}</b>.</p><p class=muted>Secondary: {html.escape(plan['secondary'])}.</p>")


def _family_table(res: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(r['study'])}</td><td>{r['count']}</td><td>{r['p_value']:.3g}</td>"
                   f"<td>{r['p_holm']:.3g}</td></tr>" for r in res.get("family") or [])
    return ("<p class=muted>Every count of every study in the family (this one and --family), Holm-corrected "
            "together.</p><table><tr><th>study</th><th>demos/task</th><th>p</th><th>p Holm (all counts and splits)"
            f"</th></tr>{rows}</table>")


def _runs_table(res: dict[str, Any], cfg: StudyConfig) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['run'])}</td><td>{r['arm']}</td><td>{r['count']}</td><td>{r['seed']}</td>"
        + (_rate_cell(r.get("success")) + f"<td>{r.get('lr', '–')}</td><td>{r.get('warmup', '–')}</td>"
           f"<td>{r.get('steps', '–')}</td>" if r["done"] else "<td colspan=5 class=muted>not finished</td>") + "</tr>"
        for r in res["runs"]
    )
    pre = "".join(f"<li><code>pre{i}</code> = {html.escape(str(p))}</li>" for i, p in enumerate(cfg.pretrained))
    return (f"<ul>{pre}</ul><table><tr><th>run</th><th>arm</th><th>demos/task</th><th>seed</th><th>success</th>"
            f"<th>Wilson 95%</th><th>lr</th><th>warmup</th><th>steps</th></tr>{rows}</table>")


def _curves_of_largest(cfg: StudyConfig) -> str:
    parts = []
    for arm in ("scratch", "pre0"):
        run_dir = bundle_dir(cfg.out) / "runs" / Run(arm, max(cfg.counts), cfg.seeds[0]).name / "train"
        if (run_dir / "metrics.jsonl").is_file():
            rows = read_metrics(run_dir / "metrics.jsonl")
            if rows:
                parts.append(f"<h3>{arm}, {max(cfg.counts)} demos/task, seed {cfg.seeds[0]}</h3>{training_curves(rows)}")
    return "".join(parts)


def render(cfg: StudyConfig, res: dict[str, Any]) -> str:
    done = sum(r["done"] for r in res["runs"])
    title = f"openlbm data-efficiency study — {cfg.out.name}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Fine-tuning tasks: <code>{html.escape(cfg.tasks)}</code>; demos per task {list(cfg.counts)}; training seeds "
        f"{list(cfg.seeds)}; {cfg.eval_episodes_per_task} evaluation episodes per task and run, the same initial "
        f"states for every run (eval seed {cfg.eval_seed}). Runs finished: {done}/{len(res['runs'])}.</p>",
        *(["<p><b>Departures from the published protocol</b> (read the results as exploratory): "
            + html.escape("; ".join(res["deviations"])) + ".</p>"] if res["deviations"] else []),
        "<h2>Primary endpoint</h2>" + _primary_section(res),
        "<h2>Data multiplier</h2>" + _multiplier_section(res),
    ]
    names = ["overall", *res["tasks"]]
    if any(res["curves"][a] for a in res["curves"]):
        sections.append("<h2>Success vs demonstrations (Wilson 95%)</h2>" + _curve_plot(res["curves"], names))
    sections.append("<h2>Fine-tuned vs scratch at each count</h2><p class=muted>Episodes paired by training seed, task "
                    "and initial state, pooled over tasks; Holm-corrected across counts; "
                    f"alpha={res['analysis']['alpha']}.</p>" + _tests_table(res))
    if len(res.get("family") or []) > len(res["tests"]):
        sections.append("<h2>Every count and split (Holm)</h2>" + _family_table(res))
    if res["tests"]:
        sections.append("<h2>Per task</h2><p class=muted>Exact McNemar over episodes (pooled over training seeds, "
                        "episodes taken as independent), Holm across tasks within a count: secondary.</p>"
                        + _per_task_tables(res))
    if res["scale"] is not None:
        sections.append(f"<h2>Pretraining scale (fine-tuned at {res['scale']['count']} demos/task)</h2>"
                        + (_scale_plot(res["scale"]) or "<p class=muted>No scale run finished yet.</p>")
                        + _scale_table(res["scale"]))
    curves = _curves_of_largest(cfg)
    if curves:
        sections.append("<h2>Training curves</h2>" + curves)
    sections.append("<h2>Runs</h2>" + _runs_table(res, cfg))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # shards may write at the same time
    tmp.write_text(text)
    tmp.replace(path)


def write_study_report(cfg: StudyConfig) -> Path:
    """Write ``results.json`` and ``report.html`` into the study folder; returns the report's path."""
    res = analyse(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    _write_atomic(cfg.out / RESULTS_FILE, json.dumps(_finite(res), indent=1) + "\n")
    _write_atomic(cfg.out / REPORT_FILE, render(cfg, res))
    return cfg.out / REPORT_FILE


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
