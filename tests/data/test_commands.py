"""``lbm data info|validate|stats|view`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openlbm.cli import main


def test_info_validate_stats_view(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(tiny), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["frames"] == 19 and info["tasks"] == ["task 0", "task 1"]
    assert (info["has_action"], info["has_state"], info["latent_dim"]) == (True, True, None)
    assert main(["data", "info", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "observation.state" in out and "actions: yes, state: yes" in out
    assert main(["data", "validate", str(tiny)]) == 0
    assert "OK" in capsys.readouterr().out
    (tiny / "meta/stats.json").write_text("{}")
    assert main(["data", "validate", str(tiny)]) == 1
    assert "no stats for feature" in capsys.readouterr().out
    assert main(["data", "stats", str(tiny)]) == 0
    assert "observation.state" in json.loads((tiny / "meta/stats.json").read_text())
    assert main(["data", "validate", str(tiny)]) == 0
    png, mp4 = tmp_path / "sheet.png", tmp_path / "ep.mp4"
    assert main(["data", "view", str(tiny), "--episode", "1", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "view", str(tiny), "--episode", "2", "--out", str(mp4)]) == 0
    import av

    with av.open(str(mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6


def test_info_fails_on_a_corrupt_dataset(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = next((tiny / "data").rglob("*.parquet"))
    data.write_bytes(data.read_bytes()[:200])  # truncated
    assert main(["data", "info", str(tiny)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "corrupt" in err[0]
    assert str(data.relative_to(tiny)) in err[0] and "Traceback" not in err[0]


def test_validate_refuses_an_empty_dataset_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_helpers import FEATURES

    from openlbm.data.writer import DatasetWriter

    DatasetWriter.create(tmp_path / "empty", FEATURES, fps=10).close()
    assert main(["data", "validate", str(tmp_path / "empty")]) == 1
    assert "0 episodes" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "empty"), "--allow-empty"]) == 0
    assert "OK" in capsys.readouterr().out
