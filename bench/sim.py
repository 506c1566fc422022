"""Simulation throughput: one env in-process vs the rollout runner, and demo generation.

    python bench/sim.py [--steps 600] [--workers 2] [--episodes-per-task 4] [--suite all|metaworld|aloha]

Prints steps/s of one Meta-World env rendering 2 cameras at 128 px (driven by the scripted expert, in this
process, llvmpipe at its default thread count), of the RolloutRunner with ``--workers`` worker processes on the
same work, their ratio (target >= 1.7x with 2 workers on 2 cores), and demo generation episodes/s. The ALOHA case
does the same with one bimanual env rendering its 3 cameras (top + both wrists) at 64 px, driven by the ALOHA
expert (whose per-episode planning runs in the policy's process and is included in both numbers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from openlbm.envs import suites
from openlbm.envs.rollout import EpisodeSpec, RolloutRunner
from openlbm.envs.tasks import instruction_for
from openlbm.types import observation_from_frames

TASK = "drawer-open-v3"  # ~90 steps per expert episode, no early success within the step budget below
ALOHA_TASK = "transfer-cube"  # success at ~210 steps, so a 150-step limit never stops an episode early


def single_env(suite: str, cfg: Any, task: str, steps: int) -> float:
    env, expert = cfg.build(task, 0), suites.scripted_expert(suite, cfg)
    frame, _ = env.reset(seed=0)
    for _ in range(5):  # warm the GL context
        env.render_cameras()
    done, t0 = 0, time.perf_counter()
    while done < steps:
        action = expert.select_action(observation_from_frames([frame], cfg.embodiment().name))[0].numpy()
        frame, _, _, truncated, info = env.step(action)
        done += 1
        if info["success"] or truncated:
            frame, _ = env.reset(seed=done)
            expert.reset()
    env.close()
    return steps / (time.perf_counter() - t0)


def runner(suite: str, cfg: Any, task: str, steps: int, workers: int) -> float:
    n_eps = max(workers, steps // cfg.max_steps)
    specs = [EpisodeSpec(f"{task}/{s}", task, s, instruction_for(task, s)) for s in range(n_eps)]
    with RolloutRunner(cfg, num_workers=workers, stop_on_success=False) as r:
        r.run(suites.scripted_expert(suite, cfg), specs[:workers], progress=False)  # warm-up: spawn, imports, GL
        t0 = time.perf_counter()
        results = r.run(suites.scripted_expert(suite, cfg), specs, progress=False)
        elapsed = time.perf_counter() - t0
    return sum(res.steps for res in results) / elapsed


def generation(workers: int, per_task: int) -> tuple[float, float] | None:
    try:
        import openlbm.data.writer  # noqa: F401
        from openlbm.envs.generate import GenerateConfig, generate_demos
    except ImportError as e:
        print(f"demo generation: skipped ({e})")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GenerateConfig(out=Path(tmp) / "demos", tasks="quickstart", episodes_per_task=per_task,
                             workers=workers, progress=False)
        t0 = time.perf_counter()
        generate_demos(cfg)
        elapsed = time.perf_counter() - t0
    n = 5 * per_task
    return n / elapsed, elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--suite", choices=("all", "metaworld", "aloha"), default="all")
    args = p.parse_args()
    print(f"{'setup':52s} {'steps/s':>9s}")
    if args.suite in ("all", "aloha"):
        aloha_cfg = suites.env_config("aloha", ("top", "left_wrist", "right_wrist"), (64, 64), 150)
        one = single_env("aloha", aloha_cfg, ALOHA_TASK, args.steps)
        many = runner("aloha", aloha_cfg, ALOHA_TASK, args.steps, args.workers)
        print(f"{'ALOHA: 1 env in-process, 3 cams @64px':52s} {one:9.1f}")
        print(f"{f'ALOHA: RolloutRunner, {args.workers} workers, 3 cams @64px':52s} {many:9.1f}")
        print(f"{'ALOHA: ratio (target >= 1.7x with 2 workers)':52s} {many / one:9.2f}x")
    if args.suite == "aloha":
        return
    cfg = suites.env_config("metaworld", ("corner2", "gripperPOV"), (128, 128), 100)
    one = single_env("metaworld", cfg, TASK, args.steps)
    many = runner("metaworld", cfg, TASK, args.steps, args.workers)
    print(f"{'Meta-World: 1 env in-process, 2 cams @128px':52s} {one:9.1f}")
    print(f"{f'Meta-World: RolloutRunner, {args.workers} workers, 2 cams @128px':52s} {many:9.1f}")
    print(f"{'Meta-World: ratio (target >= 1.7x with 2 workers)':52s} {many / one:9.2f}x")
    gen = generation(args.workers, args.episodes_per_task)
    if gen is not None:
        print(f"{'demo generation, quickstart, ' + str(args.workers) + ' workers':52s} {gen[0]:9.2f} episodes/s"
              f"  ({gen[1]:.1f}s incl. worker start-up and video encoding)")


if __name__ == "__main__":
    main()
