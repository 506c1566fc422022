"""Ordinary mistakes with the real `lbm` CLI (a subprocess each): one line `error: ...` naming what is wrong, a
non-zero exit and no traceback. `lbm --debug` shows the traceback instead."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error
from openlbm.data.writer import DatasetWriter
from openlbm.types import EmbodimentSpec, FeatureSpec

TOY = EmbodimentSpec("toy", ("cam",), (16, 16), state_dim=2, action_dim=2)


def _stats(n: int) -> dict[str, list]:
    return {"mean": [0.0] * n, "std": [1.0] * n, "min": [-2.0] * n, "max": [2.0] * n, "q01": [-1.0] * n,
            "q99": [1.0] * n, "count": [10]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid policy dir, a valid dataset, a run dir that already holds a run, and an empty folder."""
    import torch

    from openlbm.configs.presets import policy_preset as preset

    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    preset("debug").build([TOY], {"toy": {"observation.state": _stats(2), "action": _stats(2)}}).save(base / "policy")
    feats = {"observation.images.cam": FeatureSpec("video", (16, 16, 3)), "observation.state": FeatureSpec("float32", (2,)),
             "action": FeatureSpec("float32", (2,))}
    with DatasetWriter.create(base / "data", feats, fps=10.0, robot_type="toy") as w:
        for t in range(6):
            w.add_frame({"observation.images.cam": np.full((16, 16, 3), 10 * t, np.uint8),
                         "observation.state": np.array([t, -t], np.float32), "action": np.array([1, t], np.float32)},
                        task="push")
        w.save_episode()
    (base / "run").mkdir()
    (base / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (base / "empty").mkdir()
    return base


def _truncated(world: Path, tmp: Path) -> Path:
    import shutil

    d = tmp / "truncated"
    shutil.copytree(world / "policy", d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return d


def _bad_horizon(world: Path, tmp: Path) -> Path:
    import shutil

    d = tmp / "bad_horizon"
    shutil.copytree(world / "policy", d)
    meta = json.loads((d / "config.json").read_text())
    meta["policy"]["horizon"] = "sixteen"
    (d / "config.json").write_text(json.dumps(meta))
    return d


# mistake -> (argv builder (world, tmp) -> args after `lbm`, texts the error line must contain)
Args = Callable[[Path, Path], list[str]]
MISTAKES: dict[str, tuple[Args, tuple[str, ...]]] = {
    "eval unknown task": (lambda w, t: ["eval", "--tasks", "typo-v3", "--out", str(t / "e")], ("typo-v3",)),
    "eval zero episodes": (lambda w, t: ["eval", "--episodes-per-task", "0", "--out", str(t / "e")],
                           ("episodes_per_task",)),
    "eval missing policy": (lambda w, t: ["eval", "--policy", str(t / "nope"), "--tasks", "reach-v3",
                                          "--episodes-per-task", "1", "--out", str(t / "e")], ("nope",)),
    "eval truncated weights": (lambda w, t: ["eval", "--policy", str(_truncated(w, t)), "--tasks", "reach-v3",
                                             "--episodes-per-task", "1", "--out", str(t / "e")],
                               ("truncated/model.safetensors",)),
    "serve missing policy": (lambda w, t: ["serve", "--policy", str(t / "nope"), "--port", "0"], ("nope",)),
    "serve truncated weights": (lambda w, t: ["serve", "--policy", str(_truncated(w, t)), "--port", "0"],
                                ("truncated/model.safetensors",)),
    "serve horizon sixteen": (lambda w, t: ["serve", "--policy", str(_bad_horizon(w, t)), "--port", "0"],
                              ("bad_horizon/config.json", "policy.horizon", "sixteen")),
    "data info missing folder": (lambda w, t: ["data", "info", str(t / "nope")], ("nope",)),
    "data info empty folder": (lambda w, t: ["data", "info", str(w / "empty")], ("empty/meta/info.json",)),
    "train existing run without --resume": (
        lambda w, t: ["train", "debug", "--dataset", str(w / "data"), "--run-dir", str(w / "run"), "--steps", "1"],
        ("--resume", "already holds a run")),
    "train missing dataset": (lambda w, t: ["train", "debug", "--dataset", str(t / "nope"), "--run-dir", str(t / "r")],
                              ("nope", "does not exist")),
    "train no dataset": (lambda w, t: ["train", "debug", "--run-dir", str(t / "r")], ("--dataset",)),
}


def _lbm(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_is_one_line_error(world: Path, tmp_path: Path, mistake: str) -> None:
    build, must_name = MISTAKES[mistake]
    proc = _lbm(build(world, tmp_path))
    assert_one_line_error(proc, must_name)


def test_debug_flag_shows_the_traceback(world: Path, tmp_path: Path) -> None:
    proc = _lbm(["--debug", "data", "info", str(tmp_path / "nope")])
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_ctrl_c_keeps_committed_episodes_and_prints_one_line(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground process group, workers included) mid demo generation: one line on
    stderr, no traceback from the main process or its simulator workers, exit 130, and every committed episode
    is still there for the resumed run."""
    import os
    import signal
    import time

    out = tmp_path / "demos"
    proc = subprocess.Popen(
        [sys.executable, "-m", "openlbm.cli", "data", "generate", "--tasks", "reach-v3", "--episodes-per-task", "40",
         "--size", "32", "--cameras", "corner2", "--workers", "2", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a shell that runs the tests in the background ignores SIGINT, and children inherit that: restore the
        # default so the CLI sees the Ctrl-C a terminal would send
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    attempts = out / "meta" / "generation_attempts.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (attempts.is_file() and len(attempts.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted:"), stderr
    from openlbm.data.validate import validate_dataset

    assert validate_dataset(out) == [] and len(attempts.read_text().splitlines()) >= 2
