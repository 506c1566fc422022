"""``write_report(dir)``: one self-contained HTML page (plots as base64 PNG, clips as base64 MP4; no network).

Accepts an eval dir (``eval_config.json``) or a training run dir (``metrics.jsonl``, with eval dirs anywhere below
it). For an eval dir, the training curves come from the run that produced the policy when it can be found.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from openlbm.eval.compare import Comparison, TaskComparison, compare
from openlbm.eval.html import CSS, ci, pct, png_img, pyplot, read_metrics, training_curves
from openlbm.eval.records import CONFIG_FILE, EvalSummary, load_records, outcomes
from openlbm.eval.stats import BetaPosterior

log = logging.getLogger(__name__)

def _label(s: EvalSummary) -> str:
    return f"{s.out_dir.name} ({Path(s.policy).name or s.policy})"


# -- plots ---------------------------------------------------------------------------------------------------------
def _bar_chart(summaries: list[EvalSummary]) -> str:
    plt = pyplot()
    import numpy as np

    tasks = list(summaries[0].tasks)
    width = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(tasks) + 2), 3.6))
    x = np.arange(len(tasks) + 1)
    for i, s in enumerate(summaries):
        ests = [s.tasks.get(t) for t in tasks] + [s.overall]
        rates = [e.rate if e is not None and e.n else 0.0 for e in ests]
        lo = [r - e.wilson[0] if e is not None and e.n else 0.0 for r, e in zip(rates, ests, strict=True)]
        hi = [e.wilson[1] - r if e is not None and e.n else 0.0 for r, e in zip(rates, ests, strict=True)]
        ax.bar(x + (i - (len(summaries) - 1) / 2) * width, rates, width, yerr=[lo, hi], capsize=3, label=_label(s))
    ax.set_xticks(x, [t.removesuffix("-v3") for t in tasks] + ["overall"], rotation=35, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95%)")
    if len(summaries) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_img(fig)


def _posterior_plot(summaries: list[EvalSummary]) -> str:
    plt = pyplot()
    import numpy as np

    names = [*summaries[0].tasks, "overall"]
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    grid = np.linspace(0.0, 1.0, 401)
    for ax, name in zip(axes.flat, names, strict=False):
        for s in summaries:
            est = s.overall if name == "overall" else s.tasks.get(name)
            if est is None:
                continue
            post = BetaPosterior.from_counts(est.successes, est.n)
            ax.plot(grid, post.pdf(grid), lw=1.3)
            ax.fill_between(grid, post.pdf(grid), alpha=0.15)
        ax.set_title(name.removesuffix("-v3"), fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return png_img(fig)


# -- tables ----------------------------------------------------------------------------------------------------------
def _summary_table(s: EvalSummary) -> str:
    head = "<tr><th>task</th><th>success</th><th>rate</th><th>Wilson 95%</th><th>Clopper-Pearson 95%</th>" \
           "<th>posterior mean</th><th>credible 95%</th><th>errors</th><th>mean steps</th></tr>"
    body = []
    for name, e in [*s.tasks.items(), ("overall", s.overall)]:
        err = s.errors.get(name, sum(s.errors.values()))
        steps = s.mean_steps.get(name, float("nan"))
        body.append(
            f"<tr><td>{html.escape(name)}</td><td>{e.successes}/{e.n}</td><td>{pct(e.rate)}</td><td>{ci(e.wilson)}</td>"
            f"<td>{ci(e.clopper_pearson)}</td><td>{pct(e.posterior_mean)}</td><td>{ci(e.credible)}</td>"
            f"<td>{err}</td><td>{'' if math.isnan(steps) else f'{steps:.0f}'}</td></tr>"
        )
    groups = "".join(f"<tr><td>{html.escape(label)}</td><td>{count}</td><td>{pct(rate)}</td><td>{ci(w)}</td></tr>"
                     for label, count, rate, w in s.group_rows())
    group_table = (f"<h3>Difficulty groups</h3><table><tr><th>group</th><th>episodes</th><th>rate</th>"
                   f"<th>Wilson 95%</th></tr>{groups}</table>") if groups else ""
    return f"<table>{head}{''.join(body)}</table>{group_table}"


def _comparison_tables(summaries: list[EvalSummary], comparisons: list[Comparison]) -> str:
    base = summaries[0]
    runs = "".join(
        f"<tr><td>{html.escape(_label(s))}</td><td>{s.overall.successes}/{s.overall.n}</td><td>{pct(s.overall.rate)}</td>"
        f"<td>{ci(s.overall.wilson)}</td></tr>"
        for s in summaries
    )
    parts = [f"<h3>Runs</h3><table><tr><th>eval</th><th>success</th><th>rate</th><th>Wilson 95%</th></tr>{runs}</table>"]
    head = ("<table><tr><th>{}</th><th>A</th><th>B</th><th>Δ pp</th><th>only A / only B</th><th>test</th>"
            "<th>p</th><th>p adj.</th><th>P(B&gt;A)</th><th>verdict</th></tr>{}</table>")
    for s, c in zip(summaries[1:], comparisons, strict=True):
        parts.append(
            f"<h3>{html.escape(_label(s))} vs {html.escape(_label(base))}</h3>"
            f"<p class=muted>alpha={c.alpha}, {c.correction} correction across tasks; overall pools all episodes.</p>"
            + head.format("task", _comparison_rows([*c.tasks, c.overall]))
        )
        if c.groups:
            parts.append(f"<p class=muted>Difficulty groups: episodes pooled per group, {c.correction} across groups.</p>"
                         + head.format("group", _comparison_rows(c.groups)))
        line = c.group_mean_line()
        if line is not None:
            parts.append(f"<p>{html.escape(line)}</p>")
    return "".join(parts)


def _comparison_rows(items: list[TaskComparison]) -> str:
    return "".join(
        f"<tr><td>{html.escape(t.task)}</td><td>{pct(t.a.rate)}</td><td>{pct(t.b.rate)}</td>"
        f"<td>{100 * t.diff:+.1f}</td><td>{t.a_only}/{t.b_only}</td><td>{t.test}</td><td>{t.p_value:.3g}</td>"
        f"<td>{t.p_adjusted:.3g}</td><td>{t.prob_b_better:.3f}</td>"
        f"<td class=\"{t.verdict.split()[0]}\">{t.verdict}</td></tr>"
        for t in items
    )


def _videos(out_dir: Path, label: str) -> str:
    clips = sorted((out_dir / "videos").glob("*__*__*.mp4"))
    if not clips:
        return ""
    figs = []
    for p in clips:
        task, outcome, k = p.stem.split("__")
        data = base64.b64encode(p.read_bytes()).decode()
        figs.append(
            f'<figure><video controls muted loop autoplay playsinline width="256" src="data:video/mp4;base64,{data}">'
            f"</video><figcaption>{html.escape(task)} — {outcome} (episode {html.escape(k)})</figcaption></figure>"
        )
    return f'<h2>Rollouts — {html.escape(label)}</h2><div class="clips">{"".join(figs)}</div>'


# -- discovery -------------------------------------------------------------------------------------------------------
def _find_run_dir(policy: str) -> Path | None:
    p = Path(policy)
    for cand in [p, *p.parents][:5]:
        if (cand / "metrics.jsonl").is_file():
            return cand
    return None


def _discover(path: Path) -> tuple[list[Path], Path | None]:
    if (path / CONFIG_FILE).is_file():
        policy = json.loads((path / CONFIG_FILE).read_text()).get("policy", "")
        return [path], _find_run_dir(str(policy))
    if (path / "metrics.jsonl").is_file():
        evals = sorted(p.parent for p in path.glob("**/" + CONFIG_FILE) if len(p.relative_to(path).parts) <= 4)
        return evals, path
    raise FileNotFoundError(f"{path} is neither an eval dir ({CONFIG_FILE}) nor a training run dir (metrics.jsonl)")


def write_report(
    path: Path | str, others: Sequence[Path | str] = (), out: Path | str | None = None, title: str | None = None
) -> Path:
    """Write ``report.html`` for an eval or run dir (``others``: more eval dirs, compared against the first)."""
    path = Path(path)
    eval_dirs, run_dir = _discover(path)
    eval_dirs += [Path(o) for o in others]
    summaries = [EvalSummary.load(d) for d in eval_dirs]
    out_path = Path(out) if out is not None else path / "report.html"
    title = title or f"openlbm report — {path.name}"
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if summaries:
        base = summaries[0]
        sections.append(
            f"<p>Policy <code>{html.escape(base.policy)}</code>: <b>{pct(base.overall.rate)}</b> success over "
            f"{base.overall.n} episodes (Wilson 95% {ci(base.overall.wilson)}); {len(base.tasks)} tasks."
            + ("" if base.complete else f" <b>Incomplete:</b> {base.num_episodes}/{base.planned} episodes.")
            + "</p>"
        )
        sections.append("<h2>Success per task</h2>" + _bar_chart(summaries) + _summary_table(base))
        sections.append("<h2>Posteriors (Beta(1,1) prior)</h2>" + _posterior_plot(summaries))
    if len(summaries) > 1:
        base_out = outcomes(load_records(summaries[0].out_dir))
        comps = [compare(base_out, outcomes(load_records(s.out_dir))) for s in summaries[1:]]
        sections.append("<h2>Runs compared</h2>" + _comparison_tables(summaries, comps))
    if run_dir is not None:
        rows = read_metrics(run_dir / "metrics.jsonl")
        curves = training_curves(rows) if rows else ""
        if curves:
            sections.append(f"<h2>Training curves</h2><p class=muted>{html.escape(str(run_dir))}</p>{curves}")
    for s in summaries:
        sections.append(_videos(s.out_dir, _label(s)))
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(out_path)
    log.info("wrote %s (%.1f kB)", out_path, out_path.stat().st_size / 1e3)
    return out_path
