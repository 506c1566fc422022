"""Make ``data_helpers`` importable (``--import-mode=importlib`` puts no test folder on sys.path) + fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_helpers import make_dataset  # noqa: E402


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """3 finalized episodes (5, 8, 6 frames) of the smooth pattern at 10 fps, h264."""
    return make_dataset(tmp_path / "tiny")
