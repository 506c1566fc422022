"""Closed-loop evaluation throughput: every frame rendered vs only the frames the policy reads.

    python bench/eval.py [--preset quickstart] [--tasks reach-v3,drawer-open-v3] [--episodes 4] [--max-steps 200]
                         [--workers 2] [--size 64] [--rounds 2]

A chunked policy reads images only at the steps where it predicts a chunk (and the ``n_obs_steps - 1`` before
them); ``RolloutRunner(skip_unread_frames=True)`` (the default of ``lbm eval``) leaves the other frames unrendered.
This runs the same episodes both ways with the preset's policy (random weights: every episode runs to the time
limit, so both sides do the same number of env steps), interleaved ``--rounds`` times, checks that the executed
episodes are identical, and prints for each the env steps/s (wall clock) and the CPU milliseconds per env step of
the policy process and the env workers together (``/proc``; unlike wall clock, stable on a loaded machine), and
their ratios (the speed-up of ``lbm eval`` on Meta-World).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from inference import stats  # bench/ is on the path when run as `python bench/eval.py`
from openlbm.configs.presets import preset
from openlbm.envs.metaworld import MetaWorldConfig
from openlbm.envs.rollout import EpisodeSpec, RolloutRunner
from openlbm.envs.tasks import instruction_for


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of ``pids`` so far (Linux ``/proc/<pid>/stat``)."""
    total = sum(os.times()[:2])
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the command name
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def run(policy, cfg: MetaWorldConfig, specs: list[EpisodeSpec], workers: int, skip: bool) -> tuple[float, float, list]:
    """(env steps/s, CPU ms per env step, per-episode (success, steps, error)) of one pass over ``specs``."""
    with RolloutRunner(cfg, num_workers=workers, skip_unread_frames=skip) as runner:
        runner.run(policy, specs[:workers], progress=False)  # warm-up: spawn workers, GL contexts, env caches
        pids = runner.worker_pids
        t0, c0 = time.perf_counter(), cpu_seconds(pids)
        results = runner.run(policy, specs, progress=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
        if runner.worker_pids != pids:
            raise SystemExit("a worker was replaced during the measurement: its CPU time is lost, rerun")
    steps = sum(r.steps for r in results)
    return steps / seconds, 1e3 * cpu / steps, [(r.success, r.steps, r.error) for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quickstart")
    ap.add_argument("--tasks", default="reach-v3,drawer-open-v3")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per task")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = MetaWorldConfig(cameras=("corner2",), image_size=(args.size, args.size), max_steps=args.max_steps)
    emb = cfg.embodiment()
    pcfg = preset(args.preset).policy
    policy = pcfg.build([emb], {emb.name: {"observation.state": stats(4), "action": stats(4)}}).eval()
    specs = [EpisodeSpec(f"{t}/{k}", t, k, instruction_for(t, k)) for t in args.tasks.split(",")
             for k in range(args.episodes)]
    print(f"preset={args.preset} (chunk {pcfg.n_action_steps} of {pcfg.horizon}, {pcfg.n_obs_steps} frames of "
          f"history)  {len(specs)} episodes x {args.max_steps} steps  corner2 at {args.size}px  "
          f"workers={args.workers}  torch threads={torch.get_num_threads()}")
    best = {False: 0.0, True: 0.0}
    cpu = {False: float("inf"), True: float("inf")}
    episodes = {}
    for _ in range(args.rounds):
        for skip in (False, True):
            rate, ms, episodes[skip] = run(policy, cfg, specs, args.workers, skip)
            best[skip], cpu[skip] = max(best[skip], rate), min(cpu[skip], ms)
    if episodes[False] != episodes[True]:
        raise SystemExit(f"episodes differ with and without skipping: {episodes[False]} vs {episodes[True]}")
    for skip, name in ((False, "every frame rendered"), (True, "only frames read")):
        print(f"{name:22s} {best[skip]:7.1f} env steps/s  {cpu[skip]:6.2f} CPU ms per env step")
    print(f"ratio: {best[True] / best[False]:.2f}x steps/s, {cpu[False] / cpu[True]:.2f}x less CPU per step "
          "(same episodes: yes)")


if __name__ == "__main__":
    main()
