"""One policy, two robots: a tiny Meta-World + ALOHA mixture trains the debug preset (with in-training rollouts on
ALOHA) and evaluates on both suites, locally and through ``lbm serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("openlbm.data.writer")


def test_mixture_policy_trains_and_evaluates_on_both_suites(tmp_path: Path) -> None:
    from openlbm.envs.generate import GenerateConfig, generate_demos
    from openlbm.eval.runner import EvalConfig, evaluate

    tiny = dict(episodes_per_task=1, size=24, workers=1, progress=False)
    mw = generate_demos(GenerateConfig(out=tmp_path / "mw", tasks="reach-v3", cameras=("corner2",), **tiny))
    aloha = generate_demos(GenerateConfig(out=tmp_path / "aloha", suite="aloha", tasks="transfer-cube",
                                          cameras=("top",), **tiny))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "openlbm.cli", "train", "--dataset", str(mw), "--dataset", str(aloha), "debug",
         "--run-dir", str(run), "--eval-every", "2", "--eval-suite", "aloha", "--eval-tasks", "transfer-cube",
         "--eval-episodes", "1"], capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    policy_cfg = json.loads(next(run.glob("checkpoints/step_*/policy/config.json")).read_text())
    assert {e["name"]: e["action_dim"] for e in policy_cfg["embodiments"]} == {"metaworld_sawyer": 4,
                                                                               "aloha_bimanual": 14}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/transfer-cube" in r] == [2, 4]  # the joint policy, as the ALOHA robot
    assert len((run / "train_eval" / "step_00000004.jsonl").read_text().splitlines()) == 1
    for suite, task in (("metaworld", "reach-v3"), ("aloha", "transfer-cube")):
        summary = evaluate(EvalConfig(policy=str(run), suite=suite, tasks=task, episodes_per_task=1, max_steps=5,
                                      num_workers=1, record_video=False, report=False, progress=False,
                                      out=tmp_path / f"eval-{suite}"))
        assert summary.overall.n == 1 and sum(summary.errors.values()) == 0, (suite, summary.errors)
        meta = json.loads((tmp_path / f"eval-{suite}" / "eval_config.json").read_text())
        assert meta["embodiment"]["name"] == {"metaworld": "metaworld_sawyer", "aloha": "aloha_bimanual"}[suite]

    # The same joint policy served: `lbm eval --server` drives the server's ALOHA embodiment in the ALOHA suite.
    from openlbm.serve.launch import spawn_server

    proc, port = spawn_server(run, tmp_path / "serve.log", ["--device", "cpu"])
    try:
        summary = evaluate(EvalConfig(server=f"ws://127.0.0.1:{port}", suite="aloha", tasks="transfer-cube",
                                      episodes_per_task=1, max_steps=5, num_workers=1, record_video=False,
                                      report=False, progress=False, out=tmp_path / "eval-served"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert summary.overall.n == 1 and sum(summary.errors.values()) == 0, summary.errors
    meta = json.loads((tmp_path / "eval-served" / "eval_config.json").read_text())
    assert meta["embodiment"]["name"] == "aloha_bimanual"
