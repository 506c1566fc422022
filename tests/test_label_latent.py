"""`lbm data label-latent`: a new dataset = the input + latent action labels (recomputed here independently, frame
by frame), with provenance, hard-linked videos, the folder lock, and a clean restart after a crash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from openlbm.data import derive
from openlbm.data.dataset import RobotDataset
from openlbm.data.validate import validate_dataset
from openlbm.data.writer import DatasetWriter
from openlbm.errors import LockedError
from openlbm.label_latent import LATENT_INDEX_KEY, LATENT_KEY, PROVENANCE_PATH, label_dataset
from openlbm.models.latent_action import LatentActionConfig
from openlbm.policies.latent_action import LAM, LAMConfig
from openlbm.types import EmbodimentSpec, FeatureSpec

CAMS = ("top", "wrist")
TINY = LatentActionConfig(groups=2, codebook_size=4, code_dim=3, encoder_widths=(8, 16), encoder_hidden=32,
                          pool_size=2, decoder_widths=(8, 16), decoder_blocks=1, group_size=4)


def make_dataset(root: Path, lengths: tuple[int, ...] = (7, 9, 5)) -> Path:
    """Two cameras of a bright square moving in a different direction per episode, with state and actions."""
    feats = {f"observation.images.{c}": FeatureSpec("video", (16, 16, 3)) for c in CAMS}
    feats |= {"observation.state": FeatureSpec("float32", (4,)), "action": FeatureSpec("float32", (4,))}
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, feats, fps=10.0, robot_type="toy") as w:
        for ep, n in enumerate(lengths):
            move = [(1, 0), (0, 1), (-1, 1)][ep % 3]
            for t in range(n):
                frame: dict = {"observation.state": np.array([t * move[0], t * move[1], 0, 1], np.float32),
                               "action": rng.normal(size=4).astype(np.float32)}
                for i, c in enumerate(CAMS):
                    img = np.full((16, 16, 3), 30 * i, np.uint8)
                    y, x = 4 + t * move[0] % 8, 4 + t * move[1] % 8
                    img[y : y + 4, x : x + 4] = 220
                    frame[f"observation.images.{c}"] = img
                w.add_frame(frame, task=f"move {ep}")
            w.save_episode()
    return root


def make_lam(d: Path, frame_gap: int = 3) -> Path:
    """A saved LAM whose outputs depend on its inputs (zero-initialised layers randomised, codebook from data)."""
    torch.manual_seed(0)
    lam = LAMConfig(frame_gap=frame_gap, model=TINY).build([EmbodimentSpec("toy", CAMS, (16, 16), 4, 4)])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in lam.modules():
            if isinstance(m, nn.Linear | nn.Conv2d) and not m.weight.any():
                m.weight.copy_(0.1 * torch.randn(m.weight.shape, generator=g))
    frames = torch.randint(0, 256, (16, 6, 16, 16), generator=g, dtype=torch.uint8)
    lam.model(frames, frames.roll(1, 0))  # a training forward: the codebook starts from encoder outputs
    return lam.eval().save(d)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "src")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_labels_equal_the_model_on_independently_decoded_pairs(src: Path, tmp_path: Path) -> None:
    lam_dir = make_lam(tmp_path / "lam")
    before = _files(src)
    out = tmp_path / "out"
    record = label_dataset(lam_dir, src, out, batch_size=4)  # batches cut across frames: results must not care
    assert _files(src) == before  # the input is left alone
    assert validate_dataset(out) == []
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"][LATENT_KEY]["dtype"] == "float32" and info["features"][LATENT_KEY]["shape"] == [6]
    assert info["features"][LATENT_INDEX_KEY] == {"dtype": "int64", "shape": [2], "names": None}
    assert info["total_frames"] == 21 and not list(tmp_path.glob(".*partial"))

    lam = LAM.load(lam_dir)
    labelled, orig = RobotDataset(out), RobotDataset(src)
    for ep, t in [(0, 0), (0, 5), (1, 8), (2, 2), (2, 4)]:  # includes pairs past the episode end (last frame)
        start, n = int(labelled.meta.ep_from[ep]), int(labelled.meta.ep_len[ep])
        a, b = orig.get_frame(start + t), orig.get_frame(start + min(t + 3, n - 1))
        want_codes, want_idx = lam.encode({c: a[f"observation.images.{c}"][None] for c in CAMS},
                                          {c: b[f"observation.images.{c}"][None] for c in CAMS})
        got = labelled.get_frame(start + t)
        assert torch.allclose(got[LATENT_KEY], want_codes[0], atol=1e-6), (ep, t)
        assert torch.equal(got[LATENT_INDEX_KEY], want_idx[0]), (ep, t)
        assert torch.equal(got["observation.state"], a["observation.state"]) and torch.equal(got["action"], a["action"])
        for c in CAMS:
            assert torch.equal(got[f"observation.images.{c}"], a[f"observation.images.{c}"])
    # different motions get different codes somewhere (the labels are not one constant)
    assert len(np.unique(labelled.store.cols[LATENT_INDEX_KEY], axis=0)) > 1

    prov = json.loads((out / PROVENANCE_PATH).read_text())
    assert prov == record
    assert prov["weights_sha256"] == hashlib.sha256((lam_dir / "model.safetensors").read_bytes()).hexdigest()
    assert prov["lam_dir"] == str(lam_dir.resolve()) and prov["source_dataset"] == str(src.resolve())
    assert prov["config"] == lam.config.to_dict() and prov["frame_gap"] == 3 and prov["latent_dim"] == 6
    assert prov["cameras"] == {"top": "top", "wrist": "wrist"} and prov["openlbm_version"] and prov["created"]
    for video in (src / "videos").rglob("*.mp4"):  # hard links, not re-encoded copies
        assert os.stat(video).st_ino == os.stat(out / video.relative_to(src)).st_ino
    stats = json.loads((out / "meta/stats.json").read_text())
    assert len(stats[LATENT_KEY]["mean"]) == 6 and stats["action"] == json.loads((src / "meta/stats.json").read_text())["action"]


def test_cameras_flag_maps_dataset_cameras_onto_the_models(src: Path, tmp_path: Path) -> None:
    lam_dir = make_lam(tmp_path / "lam")
    label_dataset(lam_dir, src, tmp_path / "a")
    label_dataset(lam_dir, src, tmp_path / "b", cameras=("wrist", "top"))  # swapped: other inputs, other labels
    a, b = RobotDataset(tmp_path / "a").store.cols[LATENT_KEY], RobotDataset(tmp_path / "b").store.cols[LATENT_KEY]
    assert not np.allclose(a, b)
    assert json.loads((tmp_path / "b" / PROVENANCE_PATH).read_text())["cameras"] == {"top": "wrist", "wrist": "top"}
    with pytest.raises(ValueError, match="stacks 2"):
        label_dataset(lam_dir, src, tmp_path / "c", cameras=("top",))


def test_refusals_lock_and_restart_after_a_crash(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lam_dir = make_lam(tmp_path / "lam")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="outside the source dataset"):
        label_dataset(lam_dir, src, src)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        label_dataset(lam_dir, src, tmp_path / "foreign")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"

    def crash(*args: object) -> None:
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(derive, "_link_or_copy", crash)  # dies while copying videos, after the data files
    with pytest.raises(RuntimeError, match="killed"):
        label_dataset(lam_dir, src, out)
    assert not out.exists() and (tmp_path / ".out.partial" / "data").is_dir()  # out appears whole or not at all
    monkeypatch.undo()
    label_dataset(lam_dir, src, out)  # the rerun clears the leftover and finishes
    assert validate_dataset(out) == [] and not (tmp_path / ".out.partial").exists()
    with pytest.raises(FileExistsError, match="not empty"):
        label_dataset(lam_dir, src, out)
    with pytest.raises(ValueError, match="already has feature"):
        label_dataset(lam_dir, out, tmp_path / "twice")

    held = tmp_path / "held"
    staging = tmp_path / ".held.partial"  # where another label-latent writing `held` would be assembling it
    code = f"from openlbm.locking import lock_dir; l = lock_dir({str(staging)!r}, 'a test'); print('ready', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            label_dataset(lam_dir, src, held)
    finally:
        proc.kill()
        proc.wait()


def test_cli_labels_validates_and_reports(src: Path, tmp_path: Path) -> None:
    lam_dir = make_lam(tmp_path / "lam")
    out = tmp_path / "out"

    def lbm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=300)

    r = lbm("data", "label-latent", "--lam", str(lam_dir), "--dataset", str(src), "--out", str(out))
    assert r.returncode == 0 and "21 frames labelled" in r.stdout, r.stdout + r.stderr
    assert lbm("data", "validate", str(out)).returncode == 0
    r = lbm("data", "latent-report", str(out), "--json")
    report = json.loads(r.stdout)
    assert report["frames"] == 21 and report["frame_gap"] == 3 and report["phase"]["phases"] >= 2
    r = lbm("data", "label-latent", "--lam", str(tmp_path / "nowhere"), "--dataset", str(src), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "nowhere does not exist" in r.stderr
