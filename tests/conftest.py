"""Make the shared test helpers in this folder (``browser``) importable: ``--import-mode=importlib`` puts no test
folder on sys.path. Fixtures every test folder may use."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for the test, the previous count restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
