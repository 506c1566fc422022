"""Issue 13's last step as a user runs it: the tensorflow-datasets-written RLDS fixture converted by
``lbm data convert``, a Meta-World dataset made by ``lbm data generate``, and ``lbm train debug`` on the mixture of
both (a ``--mixture`` file names the RLDS embodiment, maps its cameras and resizes its images). The saved policy
holds each dataset's own stats and predicts a chunk for an observation of each embodiment."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openlbm.data.dataset import RobotDataset
from openlbm.jsonio import read_json
from openlbm.policies.lbm import LBMPolicy
from openlbm.policies.policy_dir import resolve_policy_dir
from openlbm.types import ACTION_KEY, STATE_KEY, EmbodimentSpec, Observation, camera_key

RLDS = Path(__file__).resolve().parents[2] / "fixtures" / "rlds" / "tiny_oxe_rlds" / "1.0.0"
SIZE = 24  # Meta-World renders at 24 px; the RLDS fixture's 32 px images are resized to it
OXE = "oxe_franka"
OXE_CAMS = {"image": "front", "wrist_image": "wrist"}  # RLDS camera -> embodiment camera
MIXTURE = [{"root": "oxe", "embodiment": OXE, "rename": OXE_CAMS, "image_size": [SIZE, SIZE]}]


def lbm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/{oxe, metaworld, oxe.json, run}``; training runs from another folder (relative roots in the mixture
    file are relative to the file)."""
    base = tmp_path_factory.mktemp("rlds_mix")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    done = lbm("data", "convert", str(RLDS), str(base / "oxe"), "--workers", "1", "--no-progress", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    done = lbm("data", "generate", "--out", str(base / "metaworld"), "--tasks", "reach-v3", "--episodes-per-task",
               "2", "--cameras", "corner2", "--size", str(SIZE), "--max-steps", "100", "--workers", "1",
               "--no-progress", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    (base / "oxe.json").write_text(json.dumps(MIXTURE))
    done = lbm("train", "debug", "--dataset", str(base / "metaworld"), "--mixture", str(base / "oxe.json"),
               "--run-dir", str(base / "run"), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    return base


def test_mixture_trains_the_debug_preset(mixed_run: Path) -> None:
    rows = [json.loads(r) for r in (mixed_run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the debug preset's 4 steps
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    sources = read_json(mixed_run / "run" / "config.json")["data"]["sources"]
    assert [Path(s["root"]) for s in sources] == [mixed_run / "oxe", mixed_run / "metaworld"]
    assert sources[0]["embodiment"] == OXE and sources[0]["image_size"] == [SIZE, SIZE]


def test_saved_policy_has_each_datasets_stats_and_serves_both_embodiments(mixed_run: Path) -> None:
    policy = LBMPolicy.load(resolve_policy_dir(mixed_run / "run"))
    assert policy.specs == {
        OXE: EmbodimentSpec(OXE, ("front", "wrist"), (SIZE, SIZE), state_dim=8, action_dim=7, fps=10.0),
        "metaworld_sawyer": EmbodimentSpec("metaworld_sawyer", ("corner2",), (SIZE, SIZE), 4, 4, fps=80.0),
    }
    for name, root, cams in ((OXE, mixed_run / "oxe", OXE_CAMS), ("metaworld_sawyer", mixed_run / "metaworld",
                                                                  {"corner2": "corner2"})):
        own = read_json(root / "meta" / "stats.json")
        for key in (STATE_KEY, ACTION_KEY):
            for stat in ("mean", "std", "q01", "q99"):
                np.testing.assert_allclose(policy.stats[name][key][stat], own[key][stat], rtol=1e-6, err_msg=f"{name} {key}")
        for src, dst in cams.items():  # pixel stats of the dataset's own videos, under the embodiment's camera name
            np.testing.assert_allclose(np.ravel(policy.stats[name][camera_key(dst)]["mean"]),
                                       np.ravel(own[camera_key(src)]["mean"]), atol=1e-3)

        spec = policy.specs[name]
        obs = _observation(root, name, cams, policy.config.n_obs_steps)
        chunk = policy.predict_chunk(obs)
        assert chunk.shape == (1, policy.config.horizon, spec.action_dim) and torch.isfinite(chunk).all()

    native = _observation(mixed_run / "oxe", OXE, OXE_CAMS, policy.config.n_obs_steps, size=None)
    with pytest.raises(ValueError, match=f"embodiment '{OXE}' expects {SIZE}x{SIZE}"):
        policy.predict_chunk(native)  # the 32 px source images are not what the policy was trained on


def _observation(root: Path, name: str, cams: dict[str, str], n_obs: int, size: int | None = SIZE) -> Observation:
    """A real window of ``root`` as a deployed robot would send it: cameras under the embodiment's names, resized
    to the policy's image size (``None`` keeps the dataset's own size)."""
    ds = RobotDataset(root, n_obs_steps=n_obs, horizon=1)
    s = ds[len(ds) // 2]
    images = {}
    for src, dst in cams.items():
        img = s[camera_key(src)]  # [T, 3, h, w] uint8
        if size is not None:
            img = F.interpolate(img.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            img = img.round().clamp(0, 255).to(torch.uint8)
        images[dst] = img[None]  # [1, T, 3, H, W]
    return Observation(images=images, state=s[STATE_KEY].float()[None], instruction=[s["task"]], embodiment=[name],
                       obs_is_pad=s["obs_is_pad"][None])


def test_a_bad_mixture_file_is_one_line_naming_entry_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "mix.json"
    bad.write_text(json.dumps([{"root": "oxe", "embodyment": OXE}]))
    done = lbm("train", "debug", "--mixture", str(bad), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{bad}[0]: unknown config keys ['embodyment']" in done.stderr
    assert not (tmp_path / "run").exists()
