"""Synchronous vs asynchronous-naive vs real-time-chunking execution in simulation, with injected inference delay.

    python bench/execution_sim.py --policy runs/quickstart --out evals/execution [--tasks quickstart]
        [--episodes-per-task 5] [--delays-ms 0,50,100,200] [--seed 1] [--num-workers 2]
    python bench/execution_sim.py --suite aloha --policy runs/aloha --out evals/execution-aloha \
        --tasks transfer-cube --modes ensemble,sync,async,rtc

Each (mode, delay) is one ``lbm eval`` run (``openlbm.eval.runner.evaluate``) in ``<out>/<mode>-<ms>ms`` on the
same initial states (``--seed``), so successes are paired across modes. A delay of D ms at the env's f Hz is
``d = ceil(D * f / 1000)`` control steps during which the robot keeps executing the previous chunk
(``ExecutionConfig.delay_steps``); ``sync`` pauses the simulation while a chunk is computed, so its outcome does not
depend on the delay and it runs once. A delay the policy's chunks cannot cover (``s + d > horizon`` with ``s =
max(n_action_steps, d)``) is reported as infeasible. Re-running the same command resumes: episodes already in
``episodes.jsonl`` are skipped, and ``actions.jsonl`` holds each episode's executed actions and chunk seams.

``ensemble`` is ACT's temporal ensembling (a chunk every step, overlapping predictions averaged; ALOHA's default
schedule, delay-independent like ``sync``); ``sync``, ``async`` and ``rtc`` execute the policy-level
``n_action_steps`` per chunk on every embodiment, so an embodiment whose own schedule ensembles (ALOHA) is measured
chunked there.

Per episode, on the motion dims (Meta-World's end-effector xyz, ALOHA's 12 arm joints; a gripper command
legitimately jumps): ``seam jump`` = mean ``|a_t - a_(t-1)|`` over the steps ``t`` that start a new chunk, ``inner
jump`` the same over the other steps, ``seam jerk`` = mean ``|a_(t+1) - 2 a_t + a_(t-1)|`` at the seams (Meta-World's
actions are end-effector displacements, so their second difference is a jerk; ALOHA's are joint-position targets,
so it is the targets' second difference, in radians).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from openlbm.envs.aloha import JOINT_NAMES
from openlbm.eval.records import load_records
from openlbm.eval.runner import EvalConfig, evaluate
from openlbm.policies.execution import ExecutionConfig, delay_steps
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


MOTION_DIMS = {
    "metaworld": [0, 1, 2],
    "aloha": [i for i, name in enumerate(JOINT_NAMES) if not name.endswith("_gripper")],
}
"""Per suite, the action dims the seam metrics measure: the arm's motion, not the gripper's open/close command."""


def seam_metrics(actions: np.ndarray, seams: np.ndarray, dims: Sequence[int]) -> dict[str, float]:
    """``actions`` ``[T, A]`` (``dims`` used), ``seams`` bool ``[T]`` -> mean seam/inner jump and seam jerk."""
    a = actions[:, list(dims)]  # [T, A] -> [T, len(dims)]
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
    d = 0 if mode in ("sync", "ensemble") else delay_steps(ms, fps)
    s = 1 if mode == "ensemble" else max(policy.config.n_action_steps, d)
    if s + d > policy.config.horizon:
        print(f"{mode} {ms} ms: infeasible (d={d} steps at {fps:g} Hz; s + d > horizon={policy.config.horizon})")
        return None
    out = args.out / f"{mode}-{ms}ms"
    out.mkdir(parents=True, exist_ok=True)
    if mode == "ensemble":
        execution = ExecutionConfig(n_action_steps=1, temporal_ensemble=args.temporal_ensemble)
    else:
        execution = ExecutionConfig(n_action_steps=s, mode=mode, delay_steps=d)
    policy.set_execution(execution)
    recorder = SeamRecorder(policy, out / "actions.jsonl")
    cfg = EvalConfig(
        policy=str(args.policy), out=out, suite=args.suite, tasks=args.tasks, episodes_per_task=args.episodes_per_task,
        seed=args.seed, num_workers=args.num_workers, record_video=False, report=False, progress=False,
        execution="sync" if mode == "ensemble" else mode, delay_steps=d, max_steps=args.max_steps,
    )
    t0 = time.monotonic()
    try:
        evaluate(cfg, policy=recorder)  # type: ignore[arg-type]
    finally:
        recorder.close()
    print(f"{mode} {ms} ms (d={d}, s={s}): {time.monotonic() - t0:.0f} s")
    return out


def summarize(out: Path, seeds: set[int], dims: Sequence[int]) -> dict:
    """Success per start and mean seam metrics of one run, over the starts ``seeds`` (those every run has)."""
    records = {r["seed"]: r for r in load_records(out) if r["seed"] in seeds}
    metrics = []
    for line in (out / "actions.jsonl").read_text().splitlines():
        ep = json.loads(line)
        rec = records.get(ep["seed"])
        if rec is None:
            continue
        n = int(rec["steps"])
        metrics.append(seam_metrics(np.asarray(ep["actions"][:n]), np.asarray(ep["seams"][:n], dtype=bool), dims))
    # ensembling starts no chunk seam (every step averages chunks): its seam columns stay nan, without a warning
    vals = {k: [m[k] for m in metrics if not np.isnan(m[k])] for k in ("seam_jump", "inner_jump", "seam_jerk")}
    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in vals.items()}
    succ = {seed: bool(r["success"]) for seed, r in records.items()}
    return {"success": succ, **mean, "episodes": len(records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--suite", default="metaworld", choices=sorted(MOTION_DIMS))
    ap.add_argument("--tasks", default=None, help="task names or set (default: the suite's)")
    ap.add_argument("--episodes-per-task", type=int, default=5)
    ap.add_argument("--delays-ms", default="0,50,100,200")
    ap.add_argument("--modes", default="sync,async,rtc", help="of ensemble, sync, async, rtc")
    ap.add_argument("--temporal-ensemble", type=float, default=0.01, help="the ensemble mode's weight decay")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="episode time limit (default: the suite's)")
    ap.add_argument("--summary-only", action="store_true", help="summarize what the out dir holds; run nothing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    policy = LBMPolicy.load(resolve_policy_dir(args.policy)).eval()
    # Each run's execution holds for every embodiment: an embodiment's own schedule (ALOHA ensembles) would override it.
    policy.embodiment_schedules = False
    delays = [int(x) for x in args.delays_ms.split(",")]
    runs: dict[tuple[str, int], Path] = {}
    for mode in args.modes.split(","):
        for ms in [0] if mode in ("sync", "ensemble") else [m for m in delays if m > 0]:
            out = args.out / f"{mode}-{ms}ms" if args.summary_only else run_one(args, policy, mode, ms)
            if out is not None and (out / "actions.jsonl").is_file():
                runs[(mode, ms)] = out
    # Paired: only the starts every run has finished (a run cut short by a resume-able stop has fewer).
    seeds = set.intersection(*({r["seed"] for r in load_records(out)} for out in runs.values()))
    table = {f"{m}-{ms}ms": summarize(out, seeds, MOTION_DIMS[args.suite]) for (m, ms), out in runs.items()}
    # paired against the first delay-free run: ensembling where it was run (ALOHA's default), else sync
    base_name = next((n for n in ("ensemble-0ms", "sync-0ms") if n in table), None)
    base = table.get(base_name) if base_name else None
    print(f"{'run':>14} {'success':>9} {f'vs {base_name} +/-':>20} {'seam jump':>10} {'inner jump':>11} {'seam jerk':>10}")
    for name, row in table.items():
        s = row["success"]
        paired = "" if base is None else (
            f"{sum(s[k] and not base['success'][k] for k in s if k in base['success'])}/"
            f"{sum(base['success'][k] and not s[k] for k in s if k in base['success'])}"
        )
        print(f"{name:>14} {sum(s.values()):>4}/{len(s):<4} {paired:>20} {row['seam_jump']:>10.3f} "
              f"{row['inner_jump']:>11.3f} {row['seam_jerk']:>10.3f}")
    (args.out / "summary.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
