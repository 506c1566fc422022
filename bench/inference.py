"""Inference latency of ``predict_chunk``: observation encoding vs denoising, for 1, 5 and 10 flow steps.

    python bench/inference.py [--preset small] [--batch 1] [--repeats 20] [--rounds 5] [--threads 2]

Encoding (vision + language + proprio + observation transformer + cross-attention K/V) runs once per chunk; each
denoising step re-runs only the action tokens. Prints, per step count, the best-of-N encode / denoise / total
milliseconds and the denoise-cost-per-step / encode-cost ratio (target < 30% for ``small``: proof that the
encodings are reused rather than recomputed at every step).
"""

from __future__ import annotations

import argparse
import time

import torch

from openlbm.configs.presets import policy_preset as preset
from openlbm.types import EmbodimentSpec, Observation

STEPS = (1, 5, 10)
EMB = EmbodimentSpec("metaworld_sawyer", ("corner2", "gripperPOV"), (96, 96), state_dim=4, action_dim=4)


def stats(n: int) -> dict[str, list]:
    return {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n,
            "q01": [-1.0] * n, "q99": [1.0] * n, "count": [1]}


def timed(fn, repeats: int) -> float:
    """Best-of-``repeats`` milliseconds of ``fn()`` after two warm-up calls (robust to a busy machine)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def measure(policy, obs: Observation, repeats: int, rounds: int) -> tuple[float, dict[int, tuple[float, float]]]:
    """(encode ms, {steps: (denoise ms, total ms)}), each the minimum over ``rounds`` interleaved rounds."""
    enc = policy.encode_observation(obs)
    enc_ms = float("inf")
    best: dict[int, tuple[float, float]] = {s: (float("inf"), float("inf")) for s in STEPS}
    for _ in range(rounds):
        enc_ms = min(enc_ms, timed(lambda: policy.encode_observation(obs), repeats))
        for steps in STEPS:
            den = timed(lambda s=steps: policy.sample_actions(enc, num_steps=s), repeats)
            tot = timed(lambda s=steps: policy.predict_chunk(obs, num_steps=s), repeats)
            best[steps] = (min(best[steps][0], den), min(best[steps][1], tot))
    return enc_ms, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    policy = cfg.build([EMB], {EMB.name: {"observation.state": stats(4), "action": stats(4)}}).eval()
    b, t = args.batch, cfg.n_obs_steps
    obs = Observation(
        images={c: torch.randint(0, 256, (b, t, 3, *EMB.image_size), dtype=torch.uint8) for c in EMB.cameras},
        state=torch.randn(b, t, EMB.state_dim),
        instruction=["open the drawer"] * b,
        embodiment=[EMB.name] * b,
    )
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"preset={args.preset}  params={n_params / 1e6:.2f}M  batch={b}  T={t}  cameras=2x96px  "
          f"horizon={cfg.horizon}  threads={torch.get_num_threads()}")
    with torch.inference_mode():
        enc_ms, best = measure(policy, obs, args.repeats, args.rounds)
    print(f"{'steps':>5} {'encode ms':>10} {'denoise ms':>11} {'total ms':>9} {'per-step ms':>12} {'step/encode':>12}")
    for steps, (den_ms, tot_ms) in best.items():
        per = den_ms / steps
        print(f"{steps:>5} {enc_ms:>10.2f} {den_ms:>11.2f} {tot_ms:>9.2f} {per:>12.2f} {per / enc_ms:>11.1%}")

if __name__ == "__main__":
    main()
