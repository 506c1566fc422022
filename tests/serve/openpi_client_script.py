"""Runs inside a separate venv with the PyPI ``openpi-client`` (numpy<2); never imports openlbm.

Usage: python openpi_client_script.py PORT API_KEY SEED N. Prints one JSON line with what it saw.
"""

import json
import sys

import numpy as np
from openpi_client import action_chunk_broker, websocket_client_policy


def main() -> None:
    port, api_key, seed, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)
    meta = client.get_server_metadata()
    emb = meta["embodiments"][meta["default_embodiment"]]
    rng = np.random.default_rng(seed)
    obs = {
        key: (rng.integers(0, 256, spec["shape"], dtype=np.uint8) if spec.get("dtype") == "uint8" else None)
        for key, spec in emb["observation"].items()
    }
    obs["observation/state"] = rng.normal(size=emb["state_dim"]).astype(np.float32)
    obs["prompt"] = "open the drawer"
    obs["episode_key"] = 7  # a window request (an episode-start frame): the answer is a chunk
    outs = []
    for _ in range(n):
        out = client.infer(obs)
        outs.append(out)
    bad = dict(obs)
    del bad["observation/state"]
    try:
        client.infer(bad)
        error = None
    except RuntimeError as e:  # openpi-client raises RuntimeError on a text frame
        error = str(e)
    after_error = client.infer(obs)
    # A frame request is one control step: a broker that skips frames gets one row and fails loudly.
    frame = {k: v for k, v in obs.items() if k != "episode_key"}
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=2)
    try:
        broker.infer(frame)
        broker.infer(frame)
        broker_error = None
    except IndexError as e:
        broker_error = type(e).__name__
    print(
        json.dumps(
            {
                "metadata_keys": sorted(meta),
                "numpy": np.__version__,
                "obs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obs.items()},
                "actions": [o["actions"].tolist() for o in outs],
                "dtype": str(outs[0]["actions"].dtype),
                "timing": [sorted(o["server_timing"]) for o in outs],
                "infer_ms": [float(o["server_timing"]["infer_ms"]) for o in outs],
                "error": error,
                "after_error_shape": list(after_error["actions"].shape),
                "broker_error": broker_error,
            }
        )
    )


if __name__ == "__main__":
    main()
