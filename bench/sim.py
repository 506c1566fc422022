"""Simulation throughput: one env in-process vs the rollout runner, and demo generation.

    python bench/sim.py [--steps 600] [--workers 2] [--episodes-per-task 4]

Prints steps/s of one Meta-World env rendering 2 cameras at 128 px (driven by the scripted expert, in this
process, llvmpipe at its default thread count), of the RolloutRunner with ``--workers`` worker processes on the
same work, their ratio (target >= 1.7x with 2 workers on 2 cores), and demo generation episodes/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from openlbm.envs.expert import ScriptedExpert
from openlbm.envs.metaworld import MetaWorldConfig
from openlbm.envs.rollout import EpisodeSpec, RolloutRunner
from openlbm.envs.tasks import instruction_for
from openlbm.types import observation_from_frames

TASK = "drawer-open-v3"  # ~90 steps per expert episode, no early success within the step budget below


def single_env(cfg: MetaWorldConfig, steps: int) -> float:
    env, expert = cfg.build(TASK, 0), ScriptedExpert(cfg)
    frame, _ = env.reset(seed=0)
    for _ in range(5):  # warm the GL context
        env.render_cameras()
    done, t0 = 0, time.perf_counter()
    while done < steps:
        action = expert.select_action(observation_from_frames([frame], "metaworld_sawyer"))[0].numpy()
        frame, _, _, truncated, info = env.step(action)
        done += 1
        if info["success"] or truncated:
            frame, _ = env.reset(seed=done)
    env.close()
    return steps / (time.perf_counter() - t0)


def runner(cfg: MetaWorldConfig, steps: int, workers: int) -> float:
    n_eps = max(workers, steps // cfg.max_steps)
    specs = [EpisodeSpec(f"{TASK}/{s}", TASK, s, instruction_for(TASK, s)) for s in range(n_eps)]
    with RolloutRunner(cfg, num_workers=workers, stop_on_success=False) as r:
        r.run(ScriptedExpert(cfg), specs[:workers], progress=False)  # warm-up: spawn, imports, GL contexts
        t0 = time.perf_counter()
        results = r.run(ScriptedExpert(cfg), specs, progress=False)
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
    args = p.parse_args()
    cfg = MetaWorldConfig(cameras=("corner2", "gripperPOV"), image_size=(128, 128), max_steps=100)
    one = single_env(cfg, args.steps)
    many = runner(cfg, args.steps, args.workers)
    print(f"{'setup':44s} {'steps/s':>9s}")
    print(f"{'1 env in-process, 2 cams @128px':44s} {one:9.1f}")
    print(f"{f'RolloutRunner, {args.workers} workers, 2 cams @128px':44s} {many:9.1f}")
    print(f"{'ratio (target >= 1.7x with 2 workers)':44s} {many / one:9.2f}x")
    gen = generation(args.workers, args.episodes_per_task)
    if gen is not None:
        print(f"{'demo generation, quickstart, ' + str(args.workers) + ' workers':44s} {gen[0]:9.2f} episodes/s"
              f"  ({gen[1]:.1f}s incl. worker start-up and video encoding)")


if __name__ == "__main__":
    main()
