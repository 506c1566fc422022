"""Building blocks of openlbm's self-contained HTML reports (``lbm eval``'s and ``lbm study``'s): the style sheet,
number formatting, matplotlib figures as inline PNG, and training curves from ``metrics.jsonl``."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
.better{color:#1a7f37;font-weight:600} .worse{color:#cf222e;font-weight:600} .muted{color:#777}
img{max-width:100%} .clips{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0;text-align:center}
figcaption{font-size:.8em;color:#555;max-width:260px}
"""


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def png_img(fig: Any) -> str:
    plt = pyplot()

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def ci(ci: Sequence[float]) -> str:
    return f"[{pct(ci[0])}, {pct(ci[1])}]"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; a torn last line (run still writing) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def curve_groups(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    keys = [k for k in keys if k != "step"]
    groups = {
        "loss": [k for k in keys if "loss" in k and not k.startswith("eval/")],
        "learning rate": [k for k in keys if k == "lr" or k.endswith("/lr") or k.startswith("lr")],
        "throughput": [k for k in keys if "samples" in k or "per_s" in k or k.endswith("/s")],
        "eval success": [k for k in keys if k.startswith("eval/")],
    }
    return {name: ks for name, ks in groups.items() if ks}


def training_curves(rows: list[dict[str, Any]]) -> str:
    plt = pyplot()

    groups = curve_groups(rows)
    if not groups:
        return ""
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 2.8), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items(), strict=True):
        for k in keys[:12]:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if name == "eval success" else None, ms=3, lw=1.2, label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if name == "loss":
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return png_img(fig)
