"""``one_line``: the message ``lbm`` prints for a user error, also when it was raised in a DataLoader worker."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from openlbm.data.layout import DatasetError
from openlbm.errors import UserError, one_line


class _BadEpisode(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        raise DatasetError("file=data/x.mp4, episode=2, field=observation.images.cam: no frame within 0.025s")


def test_dataset_error_from_a_loader_worker_keeps_only_its_message() -> None:
    with pytest.raises(DatasetError) as e:
        next(iter(DataLoader(_BadEpisode(), num_workers=1)))
    assert "Traceback" in str(e.value)  # what torch re-raises: the worker's traceback inside the message
    assert one_line(e.value) == "file=data/x.mp4, episode=2, field=observation.images.cam: no frame within 0.025s"
    assert isinstance(e.value, UserError)


def test_multi_line_messages_become_one_line() -> None:
    assert one_line(ValueError("a\n  b\n")) == "a b"
    assert one_line(FileNotFoundError(2, "No such file or directory", "x/y")) == \
        "[Errno 2] No such file or directory: 'x/y'"
