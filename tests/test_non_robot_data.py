"""The whole non-robot-data workflow through the real CLI, at toy size: demos -> the same demos without actions
(video) -> a latent action model trained on that video -> the video labelled with latent actions; simulator renders
captioned as WebDataset shards; one policy trained on the three-way mixture (actions, latent actions, image-text);
then fine-tuned on actions alone (the latent head is dropped). And a policy pretrained on latent-labelled video
only (no action anywhere) fine-tunes on actions: its 0-wide action projections start fresh."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


def lbm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=900)


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    r = lbm(*args)
    assert r.returncode == 0, f"lbm {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """Demos, the same demos as latent-labelled video (a LAM trained on them), and the labels' width."""
    root = tmp_path_factory.mktemp("chain")
    demos, video, lam, labelled = (root / n for n in ("demos", "video", "lam", "video-lat"))
    ok("data", "generate", "--tasks", "reach-v3", "--episodes-per-task", "2", "--size", "32", "--cameras", "corner2",
       "--workers", "1", "--out", str(demos), "--no-progress")
    ok("data", "strip-actions", str(demos), str(video))
    ok("train", "lam-debug", "--dataset", str(video), "--run-dir", str(lam))
    ok("data", "label-latent", "--lam", str(lam), "--dataset", str(video), "--out", str(labelled))
    return demos, labelled, json.loads((labelled / "meta" / "latent_action.json").read_text())["latent_dim"]


def test_three_way_mixture_trains_then_fine_tunes_on_actions(chain: tuple[Path, Path, int], tmp_path: Path) -> None:
    demos, labelled, width = chain
    shards = tmp_path / "shards"
    ok("data", "image-text", "--tasks", "reach-v3", "--episodes-per-task", "1", "--size", "32", "--cameras", "corner2",
       "--max-steps", "20", "--workers", "1", "--out", str(shards), "--no-progress")

    mixture = ["--dataset", str(demos), "--dataset", str(labelled), "--image-text", str(shards),
               "--image-text-batch-size", "4", "--steps", "6", "--log.every", "1"]
    r = lbm("train", "debug", *mixture, "--run-dir", str(tmp_path / "no-head"))  # latent labels, no latent head
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and f"--policy.latent-dim {width}" in r.stderr

    pre = tmp_path / "pre"
    ok("train", "debug", *mixture, "--policy.latent-dim", str(width), "--run-dir", str(pre))
    rows = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    for key in ("loss/action", "loss/latent", "loss/image_text", "image_text_acc"):
        assert any(key in r for r in rows), key
        assert all(math.isfinite(r[key]) for r in rows if key in r), key
    assert all(r["loss"] > 0 for r in rows)

    ft = tmp_path / "ft"
    ok("finetune", "debug", "--init-from", str(pre), "--dataset", str(demos), "--run-dir", str(ft))
    report = json.loads((ft / "init_report.json").read_text())
    assert "model.latent_in.weight" in report["dropped"] and "model.latent_out.weight" in report["dropped"]
    assert any(k.startswith("model.trunk.") for k in report["loaded"]) and not report["new"]
    assert list(ft.glob("checkpoints/step_*/policy/model.safetensors"))


def test_video_only_pretraining_fine_tunes_on_actions(chain: tuple[Path, Path, int], tmp_path: Path) -> None:
    demos, labelled, width = chain
    pre = tmp_path / "pre"
    ok("train", "debug", "--dataset", str(labelled), "--policy.latent-dim", str(width), "--run-dir", str(pre),
       "--log.every", "1")
    rows = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    assert all("loss/action" not in r and r["loss/latent"] > 0 for r in rows if "loss" in r)
    ft = tmp_path / "ft"
    ok("finetune", "debug", "--init-from", str(pre), "--dataset", str(demos), "--run-dir", str(ft))
    report = json.loads((ft / "init_report.json").read_text())
    emb = report["source_embodiments"][0]
    assert {f"model.action_in.{emb}.weight", f"model.action_out.{emb}.weight"} <= set(report["new"])
    assert "model.latent_in.weight" in report["dropped"] and any(k.startswith("model.trunk.") for k in report["loaded"])
