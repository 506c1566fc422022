"""Impossible flags are refused in one line before anything is created: a device the machine lacks or torch does not
know, a port outside 0..65535, an episode the dataset does not have. In-process (``openlbm.cli.main``): the checks
run before any model, dataset or server is built, so no subprocess is needed to see them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openlbm.cli import main
from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("args") / "data"
    feats = {"observation.images.cam": FeatureSpec("video", (16, 16, 3)), "observation.state": FeatureSpec("float32", (2,)),
             "action": FeatureSpec("float32", (2,))}
    with DatasetWriter.create(root, feats, fps=10.0, robot_type="toy") as w:
        for t in range(4):
            w.add_frame({"observation.images.cam": np.full((16, 16, 3), 10 * t, np.uint8),
                         "observation.state": np.array([t, -t], np.float32), "action": np.array([1, t], np.float32)},
                        task="push")
        w.save_episode()
    return root


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as far as the command can tell, has no CUDA (so the test means the same on a GPU host)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *texts: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert all(t in err[0] for t in texts), err[0]


@pytest.mark.usefixtures("no_cuda")
def test_devices_are_checked_before_anything_is_created(dataset: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _error(capsys, ["train", "debug", "--device", "tpu", "--dataset", str(dataset), "--run-dir", str(run)],
           "--device tpu", "unknown device")
    _error(capsys, ["train", "debug", "--device", "cuda", "--dataset", str(dataset), "--run-dir", str(run)],
           "--device cuda", "CUDA is not available")
    assert not run.exists()
    _error(capsys, ["eval", "--device", "cuda", "--tasks", "reach-v3", "--out", str(tmp_path / "e")],
           "--device cuda", "CUDA is not available")
    assert not (tmp_path / "e").exists()
    _error(capsys, ["serve", "--policy", str(tmp_path / "nope"), "--device", "cuda"], "--device cuda")
    _error(capsys, ["quickstart", "--smoke", "--device", "cuda", "--out", str(tmp_path / "q")], "--device cuda")
    assert not (tmp_path / "q").exists()  # no demos generated for a run that could not start


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_port_outside_the_tcp_range(tmp_path: Path, port: str, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["serve", "--policy", str(tmp_path / "nope"), "--port", port], f"--port {port}", "0..65535")


def test_view_episode_the_dataset_does_not_have(dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sheets" / "ep.png"
    _error(capsys, ["data", "view", str(dataset), "--episode", "99", "--out", str(out)], "--episode 99",
           "episodes 0..0")
    assert not out.parent.exists()


def test_image_sizes_are_checked_before_anything_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["data", "generate", "--tasks", "drawer-close-v3", "--size", "33", "--out", str(tmp_path / "d")],
           "--size must be an even number", "got 33")
    assert not (tmp_path / "d").exists()
    _error(capsys, ["quickstart", "--size", "33", "--out", str(tmp_path / "q")], "got 33")
    _error(capsys, ["quickstart", "--size", "16", "--out", str(tmp_path / "q")], "16x16 px", "2x2 feature grid",
           "minimum is 4x4")
    assert not (tmp_path / "q").exists()
