"""Every task guide under docs/guides ends in a `<!-- guide-check -->` block of commands that must work on a fresh
clone: each block runs here, as written, in a scratch folder beside the repository's `tests/` (for its fixtures)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
BLOCK = re.compile(r"<!-- guide-check -->\s*```bash\n(.*?)```", re.S)


def _check_block(guide: Path) -> str | None:
    found = BLOCK.findall(guide.read_text())
    return found[-1] if found else None


def test_every_guide_ends_in_a_checked_command_block() -> None:
    assert GUIDES, "no guides found"
    missing = [g.name for g in GUIDES if _check_block(g) is None]
    assert not missing, f"guides without a <!-- guide-check --> block: {missing}"


@pytest.mark.parametrize("guide", [g for g in GUIDES if _check_block(g)], ids=lambda g: g.stem)
def test_guide_commands_run_on_a_fresh_checkout(guide: Path, tmp_path: Path) -> None:
    block = _check_block(guide)
    assert block is not None
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    python = shlex.quote(sys.executable)
    tools = {"lbm": f"{python} -m openlbm.cli", "torchrun": f"{python} -m torch.distributed.run", "python": python}
    script = "set -euo pipefail\n" + re.sub(r"(?<![\w/])\.venv/bin/(lbm|torchrun|python)\b",
                                              lambda m: tools[m.group(1)], block)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{guide.name}: a command failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
