"""``lbm train``: the command that composes the trainer with in-training evaluation."""

from __future__ import annotations

from pathlib import Path

from openlbm.configs.presets import preset
from openlbm.train_command import with_datasets


def test_dataset_flag_appends_sources() -> None:
    cfg = with_datasets(preset("debug"), (Path("a"), Path("b")))
    assert [s.root for s in cfg.data.sources] == [Path("a"), Path("b")]
