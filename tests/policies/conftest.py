"""Make ``policy_helpers`` importable (``--import-mode=importlib`` puts no test folder on sys.path) + fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_helpers import ARM, make_stats  # noqa: E402


@pytest.fixture
def debug_policy():
    from openlbm.policies.config import preset

    torch.manual_seed(0)
    return preset("debug").build([ARM], {"arm": make_stats(ARM)})
