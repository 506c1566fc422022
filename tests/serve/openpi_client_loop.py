"""Runs inside the openpi-client venv (numpy<2); never imports openlbm. A plain openpi robot loop: one
``WebsocketClientPolicy`` per robot, one frame per control step, ``actions[0]`` executed, ``"reset": True`` at an
episode start.

Usage: python openpi_client_loop.py PORT FRAMES.npz. Prints one JSON line: the executed actions ``[T][B][A]``.
"""

import json
import sys

import numpy as np
from openpi_client import websocket_client_policy


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    data = np.load(path)
    cams = [k[len("images_") :] for k in data.files if k.startswith("images_")]
    steps, robots = data["state"].shape[:2]
    reset_at = {(int(t), int(b)) for t, b in data["resets"]}
    clients = [websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port) for _ in range(robots)]
    actions = []
    for t in range(steps):
        row = []
        for b, client in enumerate(clients):
            obs = {f"observation/images/{c}": data[f"images_{c}"][t, b] for c in cams}
            obs["observation/state"] = data["state"][t, b]
            obs["prompt"] = str(data["prompts"][b])
            if (t, b) in reset_at:
                obs["reset"] = True
            row.append(client.infer(obs)["actions"][0].tolist())
        actions.append(row)
    print(json.dumps({"actions": actions}))


if __name__ == "__main__":
    main()
