"""Memory of the instruction-embedding cache under ever new prompts: resident memory of this process above its
start after N distinct prompts through the policy's (cached) text encoder, the one ``lbm serve`` uses.

    python bench/prompt_cache.py                  # 1 000 .. 24 576 prompts of 3-12 words, in batches of 8

The LRU keeps ``openlbm.models.language.DEFAULT_CACHE_ENTRIES`` embeddings; past that the growth should stop.
"""

from __future__ import annotations

import argparse
import random
import time

from openlbm.policies.config import LanguageConfig
from openlbm.policies.text import build_text_encoder

WORDS = ("push", "the", "red", "block", "to", "goal", "open", "drawer", "slide", "plate", "into", "net", "pick", "up", "mug")


def rss_mib() -> float:
    """Resident memory of this process (Linux ``/proc/self/statm``, in pages)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 4096, 8192, 16384, 24576])
    args = ap.parse_args()
    enc = build_text_encoder(LanguageConfig())
    enc.encode(["warm up"])
    base = rss_mib()
    print(f"text encoder loaded: rss {base:.0f} MiB")
    rng, n, t0 = random.Random(0), 0, time.perf_counter()
    for target in args.counts:
        while n < target:
            enc.encode([" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + f" {n + i}" for i in range(8)])
            n += 8
        print(f"{n:>7} distinct prompts: rss +{rss_mib() - base:.0f} MiB "
              f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
