"""Synchronous vs asynchronous-naive vs real-time-chunking execution in simulation, with injected inference delay.

    python bench/execution_sim.py --policy runs/quickstart --out evals/execution [--tasks quickstart]
        [--episodes-per-task 5] [--delays-ms 0,50,100,200] [--seed 1] [--num-workers 2]

Each (mode, delay) is one ``lbm eval`` run (``openlbm.eval.runner.evaluate``) in ``<out>/<mode>-<ms>ms`` on the
same initial states (``--seed``), so successes are paired across modes. A delay of D ms at the env's f Hz is
``d = ceil(D * f / 1000)`` control steps during which the robot keeps executing the previous chunk
(``ExecutionConfig.delay_steps``); ``sync`` pauses the simulation while a chunk is computed, so its outcome does not
depend on the delay and it runs once. A delay the policy's chunks cannot cover (``s + d > horizon`` with ``s =
max(n_action_steps, d)``) is reported as infeasible. Re-running the same command resumes: episodes already in
``episodes.jsonl`` are skipped, and ``actions.jsonl`` holds each episode's executed actions and chunk seams.

Per episode, on the xyz action dims (Meta-World's end-effector motion; the gripper command legitimately jumps):
``seam jump`` = mean ``|a_t - a_(t-1)|`` over the steps ``t`` that start a new chunk, ``inner jump`` the same over
the other steps, ``seam jerk`` = mean ``|a_(t+1) - 2 a_t + a_(t-1)|`` at the seams (actions are end-effector
displacements, so their second difference is a jerk).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from openlbm.eval.records import load_records
from openlbm.eval.runner import EvalConfig, evaluate
from openlbm.policies.execution import delay_steps
from openlbm.policies.lbm import LBMPolicy
from openlbm.policies.policy_dir import resolve_policy_dir
from openlbm.types import Observation


class SeamRecorder:
    """Wraps an ``LBMPolicy``: records each episode's executed actions and which steps start a new chunk."""

    def __init__(self, policy: LBMPolicy, path: Path) -> None:
        self.policy, self.embodiment, self.path = policy, policy.embodiment, path
        self.execution = policy.execution
        self.noise_seed = policy.noise_seed
        self.episodes: dict[int, dict] = {}  # slot -> {"seed", "actions", "seams"}

    def reseed(self, slot: int, seed: int) -> None:
        self._flush(slot)
        self.episodes[slot] = {"seed": seed, "actions": [], "seams": []}

    def _flush(self, slot: int) -> None:
        ep = self.episodes.pop(slot, None)
        if ep is not None and ep["actions"]:
            with self.path.open("a") as f:
                f.write(json.dumps(ep) + "\n")

    def select_action(self, obs: Observation) -> torch.Tensor:
        slots = self.policy.executor.slots
        before = [s.seams for s in slots] if len(slots) == obs.batch_size else [0] * obs.batch_size
        actions = self.policy.select_action(obs)
        for k, ep in self.episodes.items():
            ep["actions"].append([round(float(x), 5) for x in actions[k]])
            ep["seams"].append(self.policy.executor.slots[k].seams > before[k])
        return actions

    def reset(self, indices: Sequence[int] | None = None) -> None:
        self.policy.reset(indices)

    def close(self) -> None:
        for slot in list(self.episodes):
            self._flush(slot)


def seam_metrics(actions: np.ndarray, seams: np.ndarray) -> dict[str, float]:
    """``actions`` ``[T, A]`` (xyz used), ``seams`` bool ``[T]`` -> mean seam/inner jump and seam jerk."""
    a = actions[:, :3]
    jump = np.linalg.norm(np.diff(a, axis=0), axis=-1)  # [T-1]: step t = 1..T-1
    jerk = np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1)  # [T-2]: centred on t = 1..T-2
    seam = seams[1:]
    nan = float("nan")
    return {
        "seam_jump": float(jump[seam].mean()) if seam.any() else nan,
        "inner_jump": float(jump[~seam].mean()) if (~seam).any() else nan,
        "seam_jerk": float(jerk[seams[1:-1]].mean()) if seams[1:-1].any() else nan,
    }


def run_one(args: argparse.Namespace, policy: LBMPolicy, mode: str, ms: int) -> Path | None:
    fps = policy.embodiment.fps
    d = 0 if mode == "sync" else delay_steps(ms, fps)
    s = max(policy.config.n_action_steps, d)
    if s + d > policy.config.horizon:
        print(f"{mode} {ms} ms: infeasible (d={d} steps at {fps:g} Hz; s + d > horizon={policy.config.horizon})")
        return None
    out = args.out / f"{mode}-{ms}ms"
    out.mkdir(parents=True, exist_ok=True)
    execution = replace(policy.default_execution(), n_action_steps=s, mode=mode, delay_steps=d)
    policy.set_execution(execution)
    recorder = SeamRecorder(policy, out / "actions.jsonl")
    cfg = EvalConfig(
        policy=str(args.policy), out=out, tasks=args.tasks, episodes_per_task=args.episodes_per_task, seed=args.seed,
        num_workers=args.num_workers, record_video=False, report=False, progress=False, execution=mode,
        delay_steps=d, max_steps=args.max_steps,
    )
    t0 = time.monotonic()
    try:
        evaluate(cfg, policy=recorder)  # type: ignore[arg-type]
    finally:
        recorder.close()
    print(f"{mode} {ms} ms (d={d}, s={s}): {time.monotonic() - t0:.0f} s")
    return out


def summarize(out: Path, seeds: set[int]) -> dict:
    """Success per start and mean seam metrics of one run, over the starts ``seeds`` (those every run has)."""
    records = {r["seed"]: r for r in load_records(out) if r["seed"] in seeds}
    metrics = []
    for line in (out / "actions.jsonl").read_text().splitlines():
        ep = json.loads(line)
        rec = records.get(ep["seed"])
        if rec is None:
            continue
        n = int(rec["steps"])
        metrics.append(seam_metrics(np.asarray(ep["actions"][:n]), np.asarray(ep["seams"][:n], dtype=bool)))
    mean = {k: float(np.nanmean([m[k] for m in metrics])) for k in ("seam_jump", "inner_jump", "seam_jerk")}
    succ = {seed: bool(r["success"]) for seed, r in records.items()}
    return {"success": succ, **mean, "episodes": len(records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", default="quickstart")
    ap.add_argument("--episodes-per-task", type=int, default=5)
    ap.add_argument("--delays-ms", default="0,50,100,200")
    ap.add_argument("--modes", default="sync,async,rtc")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="episode time limit (default: the suite's)")
    ap.add_argument("--summary-only", action="store_true", help="summarize what the out dir holds; run nothing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    policy = LBMPolicy.load(resolve_policy_dir(args.policy)).eval()
    delays = [int(x) for x in args.delays_ms.split(",")]
    runs: dict[tuple[str, int], Path] = {}
    for mode in args.modes.split(","):
        for ms in [0] if mode == "sync" else [m for m in delays if m > 0]:
            out = args.out / f"{mode}-{ms}ms" if args.summary_only else run_one(args, policy, mode, ms)
            if out is not None and (out / "actions.jsonl").is_file():
                runs[(mode, ms)] = out
    # Paired: only the starts every run has finished (a run cut short by a resume-able stop has fewer).
    seeds = set.intersection(*({r["seed"] for r in load_records(out)} for out in runs.values()))
    table = {f"{m}-{ms}ms": summarize(out, seeds) for (m, ms), out in runs.items()}
    base = table.get("sync-0ms")
    print(f"{'run':>14} {'success':>9} {'vs sync +/-':>11} {'seam jump':>10} {'inner jump':>11} {'seam jerk':>10}")
    for name, row in table.items():
        s = row["success"]
        paired = "" if base is None else (
            f"{sum(s[k] and not base['success'][k] for k in s if k in base['success'])}/"
            f"{sum(base['success'][k] and not s[k] for k in s if k in base['success'])}"
        )
        print(f"{name:>14} {sum(s.values()):>4}/{len(s):<4} {paired:>11} {row['seam_jump']:>10.3f} "
              f"{row['inner_jump']:>11.3f} {row['seam_jerk']:>10.3f}")
    (args.out / "summary.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
