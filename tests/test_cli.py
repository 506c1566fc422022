"""The `lbm` entry point dispatches to every package's commands and reports bad usage clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openlbm.cli import main


def test_top_level_help_lists_all_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("quickstart", "train", "finetune", "eval", "compare", "report", "serve", "data", "study"):
        assert name in lines and len(lines[name].split()) > 3, f"{name}: no one-line description in {out}"
    assert "Dataset tools" in lines["data"] and "Studies" in lines["study"]


def test_data_group_help_lists_dataset_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("info", "validate", "stats", "view", "generate", "image-text"):
        assert name in out


def test_unknown_command_fails_with_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "openlbm.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "frobnicate" in (proc.stderr + proc.stdout)
