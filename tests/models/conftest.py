"""Run the model tests single-threaded (see ``tests/policies/conftest.py`` for why)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def single_thread(one_thread: None) -> None:
    """Every model test runs on one intra-op thread."""
