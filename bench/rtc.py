"""Latency overhead of real-time chunking: RTC-guided vs plain flow sampling of one chunk, side by side.

    python bench/rtc.py [--policy DIR | --preset small] [--delay 4] [--batch 1] [--repeats 10] [--rounds 5]

RTC guides each denoising step with a vector-Jacobian product through the denoiser (a backward pass per step), so
a guided chunk costs more than a plain one; the encoding is shared. Prints best-of-N milliseconds of both, measured
in interleaved rounds in one process (so a busy machine slows both alike), and their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from inference import stats, timed  # bench/ is on the path when run as `python bench/rtc.py`
from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.execution import Guidance
from openlbm.types import EmbodimentSpec, Observation

EMB = EmbodimentSpec("metaworld_sawyer", ("corner2", "gripperPOV"), (64, 64), state_dim=4, action_dim=4, fps=80.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", type=Path, default=None, help="a policy dir (default: a fresh --preset policy)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--delay", type=int, default=4, help="frozen rows d of the guidance prefix")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.policy is not None:
        from openlbm.policies.lbm import LBMPolicy
        from openlbm.policies.policy_dir import resolve_policy_dir

        policy = LBMPolicy.load(resolve_policy_dir(args.policy)).eval()
    else:
        policy = preset(args.preset).build([EMB], {EMB.name: {"observation.state": stats(4), "action": stats(4)}})
    policy.eval()
    emb, cfg, b = policy.embodiments[0], policy.config, args.batch
    obs = Observation(
        images={c: torch.randint(0, 256, (b, cfg.n_obs_steps, 3, *emb.image_size), dtype=torch.uint8)
                for c in emb.cameras},
        state=torch.randn(b, cfg.n_obs_steps, emb.state_dim),
        instruction=["open the drawer"] * b,
        embodiment=[emb.name] * b,
    )
    s = cfg.n_action_steps
    with torch.inference_mode():
        previous = policy.predict_chunk(obs, chunk_index=[1] * b)  # [B, H, A]
    guidance = [Guidance(previous[i, s:], args.delay) for i in range(b)]  # the rows still ahead when launched
    plain_ms = rtc_ms = float("inf")
    with torch.inference_mode():
        for _ in range(args.rounds):
            plain_ms = min(plain_ms, timed(lambda: policy.predict_chunk(obs), args.repeats))
            rtc_ms = min(rtc_ms, timed(lambda: policy.predict_chunk(obs, guidance=guidance), args.repeats))
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"policy={args.policy or args.preset}  params={n_params / 1e6:.2f}M  batch={b}  horizon={cfg.horizon}  "
          f"flow steps={cfg.flow.num_steps}  d={args.delay}  threads={torch.get_num_threads()}")
    print(f"{'plain ms':>9} {'rtc ms':>9} {'rtc / plain':>12}")
    print(f"{plain_ms:>9.2f} {rtc_ms:>9.2f} {rtc_ms / plain_ms:>12.2f}")


if __name__ == "__main__":
    main()
