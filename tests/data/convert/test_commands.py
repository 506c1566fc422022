"""``lbm data convert`` as a user runs it: auto-detection, `lbm data validate` on the result, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from convert_helpers import LEROBOT_V21, ROBOMIMIC

from openlbm.data.convert.formats import detect
from openlbm.data.convert.source import SourceError


def lbm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("src", "fmt"), [(LEROBOT_V21, "lerobot-v2.1"), (ROBOMIMIC, "robomimic")])
def test_convert_auto_then_validate(tmp_path: Path, src: Path, fmt: str) -> None:
    out = lbm("data", "convert", str(src), str(tmp_path / "out"), "--format", "auto", "--workers", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert f"from {fmt} {src}" in out.stdout and out.stdout.strip().endswith(": OK")
    check = lbm("data", "validate", str(tmp_path / "out"))
    assert check.returncode == 0 and check.stdout.strip().endswith(": OK"), check.stdout


def test_unknown_format_and_bad_input_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("not a dataset")
    out = lbm("data", "convert", str(tmp_path / "stuff"), str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "unknown dataset format; looked for LeRobot v2.1" in out.stderr and "RLDS/TFDS" in out.stderr
    assert "robomimic HDF5" in out.stderr
    bad = tmp_path / "cut.hdf5"
    bad.write_bytes(ROBOMIMIC.read_bytes()[:5000])
    out = lbm("data", "convert", str(bad), str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: {bad}: cannot open HDF5 file")
    assert not (tmp_path / "out").exists()


def test_detect(tmp_path: Path) -> None:
    assert detect(LEROBOT_V21) == "lerobot-v2.1"
    assert detect(ROBOMIMIC) == "robomimic"
    rlds = tmp_path / "rlds" / "1.0.0"
    rlds.mkdir(parents=True)
    for name in ("dataset_info.json", "features.json", "demo-train.tfrecord-00000-of-00001"):
        (rlds / name).write_text("{}")
    assert detect(rlds) == "rlds"
    with pytest.raises(SourceError, match="does not exist"):
        detect(tmp_path / "nope")
