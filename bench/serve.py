"""Serving overhead and throughput: in-process ``predict_chunk`` vs a round trip through ``lbm serve`` on loopback.

    python bench/serve.py [--preset debug] [--requests 200] [--seconds 8]

Payload: 2 cameras 224x224 uint8 + an 8-d state (a realistic single-arm request, ~300 KB). The server runs as a real
``lbm serve`` subprocess (so client and server do not share a GIL). Prints p50/p99 latencies, the overhead ratio
(target: round trip <= in-process + 5 ms at p50) and throughput with 1/4/16 concurrent clients, with and without
dynamic batching.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from openlbm.serve import protocol
from openlbm.serve.client import PolicyClient
from openlbm.serve.launch import spawn_server
from openlbm.serve.server import PolicyRunner
from openlbm.types import EmbodimentSpec

EMB = EmbodimentSpec("bench_arm", ("front", "wrist"), (224, 224), state_dim=8, action_dim=7)


def made_up_stats(emb: EmbodimentSpec) -> dict:
    def vec(n: int) -> dict:
        return {
            "mean": [0.0] * n,
            "std": [1.0] * n,
            "min": [-2.0] * n,
            "max": [2.0] * n,
            "q01": [-1.5] * n,
            "q99": [1.5] * n,
            "count": [1000],
        }

    img = {
        k: [[[v]]] * 3
        for k, v in {"mean": 0.45, "std": 0.25, "min": 0.0, "max": 1.0, "q01": 0.02, "q99": 0.98}.items()
    }
    stats = {"observation.state": vec(emb.state_dim), "action": vec(emb.action_dim)}
    stats.update({f"observation.images.{c}": {**img, "count": [1000]} for c in emb.cameras})
    return stats


def request(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (*EMB.image_size, 3), dtype=np.uint8) for c in EMB.cameras}
    return protocol.make_observation(
        images, rng.normal(size=EMB.state_dim).astype(np.float32), "pick up the cup"
    )


def pct(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


def in_process_ms(policy: torch.nn.Module, n: int) -> list[float]:
    runner = PolicyRunner(policy)
    spec = protocol.WireSpec.from_dict(EMB.to_dict())
    window = protocol.parse_observation(request(0), {EMB.name: spec}, EMB.name, int(policy.config.n_obs_steps))
    for _ in range(5):
        runner([window])
    out = []
    for _ in range(n):
        t = time.perf_counter()
        runner([window])
        out.append((time.perf_counter() - t) * 1000)
    return out


def start_server(policy_dir: Path, log: Path, max_batch: int) -> tuple[subprocess.Popen, int]:
    return spawn_server(policy_dir, log, ["--max-batch", str(max_batch), "--max-wait-ms", "2"])


def round_trip_ms(port: int, n: int) -> list[float]:
    req = request(0)
    with PolicyClient(f"127.0.0.1:{port}") as client:
        for _ in range(5):
            client.infer(req)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            client.infer(req)
            out.append((time.perf_counter() - t) * 1000)
    return out


def throughput(port: int, n_clients: int, seconds: float) -> tuple[float, float]:
    counts = [0] * n_clients
    batch_sizes: list[int] = []
    stop = time.monotonic() + seconds
    clients = [PolicyClient(f"127.0.0.1:{port}") for _ in range(n_clients)]
    reqs = [request(i) for i in range(n_clients)]

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            out = clients[i].infer(reqs[i])
            counts[i] += 1
            batch_sizes.append(int(out["server_timing"]["batch_size"]))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n_clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    for c in clients:
        c.close()
    return sum(counts) / elapsed, float(np.mean(batch_sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()

    from openlbm.configs.presets import policy_preset as preset

    torch.manual_seed(0)
    policy = preset(args.preset).build([EMB], {EMB.name: made_up_stats(EMB)}).eval()
    tmp = Path(tempfile.mkdtemp(prefix="openlbm_bench_serve_"))
    policy.save(tmp / "policy")
    print(
        f"preset={args.preset}  payload: 2 x 224x224x3 uint8 + state[{EMB.state_dim}]  "
        f"horizon={policy.config.horizon}  torch threads={torch.get_num_threads()}"
    )

    local = in_process_ms(policy, args.requests)
    proc, port = start_server(tmp / "policy", tmp / "serve.log", max_batch=1)
    try:
        remote = round_trip_ms(port, args.requests)
        (l50, l99), (r50, r99) = pct(local), pct(remote)
        print(f"\n{'':24}{'p50 ms':>10}{'p99 ms':>10}")
        print(f"{'in-process predict':24}{l50:10.2f}{l99:10.2f}")
        print(f"{'round trip (loopback)':24}{r50:10.2f}{r99:10.2f}")
        verdict = "OK" if r50 <= l50 + 5 else "MISSED"
        print(f"overhead p50: +{r50 - l50:.2f} ms  ratio {r50 / l50:.2f}x  (target <= +5 ms: {verdict})")
        rows = {1: {}, 16: {}}
        for n in (1, 4, 16):
            rows[1][n] = throughput(port, n, args.seconds)
    finally:
        proc.terminate()
        proc.wait(60)
    proc, port = start_server(tmp / "policy", tmp / "serve_batched.log", max_batch=16)
    try:
        for n in (1, 4, 16):
            rows[16][n] = throughput(port, n, args.seconds)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\nthroughput (requests/s, mean batch size)   {'max_batch=1':>18}{'max_batch=16':>18}")
    for n in (1, 4, 16):
        a, b = rows[1][n], rows[16][n]
        print(
            f"{n:3d} concurrent clients{'':20}{a[0]:10.1f} ({a[1]:4.1f}){b[0]:11.1f} ({b[1]:4.1f})"
            f"   x{b[0] / a[0]:.2f}"
        )


if __name__ == "__main__":
    main()
