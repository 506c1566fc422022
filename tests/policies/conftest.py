"""Make ``policy_helpers`` importable (``--import-mode=importlib`` puts no test folder on sys.path) + fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_helpers import ARM, make_stats, randomize_zero_init  # noqa: E402


@pytest.fixture
def debug_policy():
    from openlbm.configs.presets import policy_preset as preset

    torch.manual_seed(0)
    return randomize_zero_init(preset("debug").build([ARM], {"arm": make_stats(ARM)}))


@pytest.fixture(autouse=True)
def single_thread(one_thread: None) -> None:
    """These models are tiny: intra-op threads buy nothing, and on a busy machine every parallel region waits for
    a descheduled worker thread (measured: a test taking 2 s alone took 25 s next to two CPU-bound processes)."""
