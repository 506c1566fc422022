"""The README quotes no number that the results page does not carry (so the two cannot drift), and it does not
hard-code the size of the test suite."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:\s?(?:%|x\b|×|min\b|minutes|s\b|ms\b|MiB|GiB|M\b|k\b))|\d+/\d+)")
"""A measured figure: a number with a unit, a percentage, a ratio or a count of successes (``104/125``)."""


def figures(markdown: str) -> set[str]:
    """Figures in prose and tables: code blocks, inline code and link targets are commands and paths, not results."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return {" ".join(m.group(0).split()) for m in FIGURE.finditer(text)}


def test_every_figure_the_readme_quotes_is_on_the_results_page() -> None:
    readme = figures((ROOT / "README.md").read_text())
    results = " ".join((ROOT / "docs" / "results.md").read_text().split())
    missing = sorted(f for f in readme if f not in results)
    assert not missing, f"README quotes figures that docs/results.md does not carry: {missing}"


def test_the_figure_scan_sees_prose_and_tables_not_commands() -> None:
    sample = "took 13.3 min, 104/125 (83%) | 1.8x | `--steps 2000` ```bash\nlbm eval --episodes 50/50\n``` [a](b/1/2)"
    assert figures(sample) == {"13.3 min", "104/125", "83%", "1.8x"}


def test_the_readme_does_not_hard_code_the_test_count() -> None:
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\b\d[\d ,]*\s+(tests|passed)\b", readme), "the test count drifts: link docs/results.md"
