"""`lbm data latent-report`: codebook use, the motion-phase proxy, and NMI against shuffled codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from openlbm.data.latent_report import (
    PhaseProxy,
    entropy,
    joint_code,
    latent_report,
    later_index,
    mutual_information,
    nmi,
    phase_labels,
)
from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec


def test_information_measures_on_known_cases() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert entropy(a) == pytest.approx(math.log(4))
    assert mutual_information(a, a) == pytest.approx(math.log(4))
    assert nmi(a, a) == pytest.approx(1.0) and nmi(a, 10 - a) == pytest.approx(1.0)  # names do not matter
    b = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # independent of a
    assert mutual_information(a, b) == pytest.approx(0.0, abs=1e-12) and nmi(a, b) == pytest.approx(0.0, abs=1e-12)
    c = a // 2  # a determines c, not the reverse: I = H(c) = log 2
    assert nmi(a, c) == pytest.approx(2 * math.log(2) / (math.log(4) + math.log(2)))
    assert nmi(np.zeros(5, int), np.zeros(5, int)) == 0.0
    assert joint_code(np.array([[1, 2], [3, 0]]), 4).tolist() == [1 + 2 * 4, 3]


def test_phase_proxy_reads_motion_direction_and_gripper() -> None:
    # one episode: 6 frames moving +x with the gripper open, then 6 descending (-z) while it closes
    state = np.zeros((12, 4))
    state[:6, 0] = np.arange(6) * 0.02
    state[6:, 0] = 0.1
    state[6:, 2] = -np.arange(6) * 0.02
    state[:, 3] = np.r_[np.ones(6), np.linspace(1.0, 0.0, 6)]
    labels, names = phase_labels(state, np.zeros(12, int), k=2, proxy=PhaseProxy())
    got = [names[i] for i in labels]
    assert got[0] == "+x grip-high" and got[7] == "-z grip-decr" and got[-1] == "still grip-low"
    assert later_index(np.array([0, 0, 0, 1, 1]), 2).tolist() == [2, 2, 2, 4, 4]  # clamped per episode
    with pytest.raises(ValueError, match="outside observation.state"):
        phase_labels(state, np.zeros(12, int), 2, PhaseProxy(gripper_dim=7))


def labelled(root: Path, codes_of: str) -> Path:
    """8 episodes of a reach-then-descend motion, ``latent_action_index`` = the phase (``"phase"``) or noise."""
    feats = {"observation.state": FeatureSpec("float32", (4,)), "latent_action_index": FeatureSpec("int64", (1,))}
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, feats, fps=10.0) as w:
        for _ in range(8):
            for t in range(20):
                down = t >= 10
                s = np.array([0.02 * min(t, 10), 0, -0.02 * max(t - 10, 0), 0.0 if down else 1.0], np.float32)
                code = int(t + 2 >= 10) if codes_of == "phase" else int(rng.integers(0, 4))
                w.add_frame({"observation.state": s, "latent_action_index": np.array([code])}, task="reach")
            w.save_episode()
    (root / "meta/latent_action.json").write_text(json.dumps({"frame_gap": 2, "codebook_size": 4}))
    return root


def test_report_separates_phase_codes_from_noise(tmp_path: Path) -> None:
    good = latent_report(labelled(tmp_path / "good", "phase"), PhaseProxy(gripper_dim=None))
    noise = latent_report(labelled(tmp_path / "noise", "noise"), PhaseProxy(gripper_dim=None))
    assert good["frames"] == 160 and good["frame_gap"] == 2 and good["groups"][0]["codes_used"] == 2
    assert good["joint"]["perplexity"] == pytest.approx(2.0, rel=0.1)
    assert noise["groups"][0]["codes_used"] == 4 and noise["joint"]["perplexity"] > 3.5
    assert good["phase"]["phases"] == 3  # +x, -z, still
    assert good["phase"]["nmi"] > 0.6 > 5 * good["phase"]["nmi_chance_max"]
    assert noise["phase"]["nmi"] < 0.1 and noise["phase"]["nmi"] <= noise["phase"]["nmi_chance_max"] + 0.02
    assert good["phase"]["table"][0]["top_code_share"] > 0.8


def test_report_refuses_an_unlabelled_dataset(tiny: Path) -> None:
    (tiny / "meta/latent_action.json").write_text(json.dumps({"frame_gap": 2}))
    with pytest.raises(ValueError, match="label the dataset first"):
        latent_report(tiny)
