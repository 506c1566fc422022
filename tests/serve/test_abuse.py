"""Bounded load/abuse test against a real ``lbm serve`` process on loopback.

16 concurrent clients send a fixed number of valid requests interleaved with malformed frames, truncated msgpack,
oversized messages, wrong API keys and abrupt disconnects. Every valid request must be answered with the right
chunk, every invalid one with an error, the server must stay up, and its RSS must stay flat between rounds.
"""

from __future__ import annotations

import inspect
import re
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets
import websockets.sync.client as wsc

from openlbm.serve import codec
from openlbm.serve.launch import spawn_server

_LEGACY = {"legacy": True} if "legacy" in inspect.signature(wsc.connect).parameters else {}

API_KEY = "abuse-key"
HEADERS = {"Authorization": f"Api-Key {API_KEY}"}
N_CLIENTS = 16
REQUESTS_PER_CLIENT = 12


def _start_server(policy_dir: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    return spawn_server(
        policy_dir,
        log_path,
        ["--api-key", API_KEY, "--max-batch", "4", "--max-wait-ms", "2", "--max-message-mb", "1"],
    )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _connect(port: int, headers: dict | None = HEADERS) -> wsc.ClientConnection:
    ws = wsc.connect(
        f"ws://127.0.0.1:{port}",
        additional_headers=headers,
        max_size=None,
        compression=None,
        open_timeout=30,
        **_LEGACY,
    )
    assert isinstance(ws.recv(timeout=30), bytes)  # metadata first
    return ws


def _bad_frames(req: dict) -> list[bytes | str]:
    packed = codec.packb(req)
    missing = {k: v for k, v in req.items() if k != "prompt"}
    nan_state = {**req, "observation/state": np.full_like(req["observation/state"], np.nan)}
    return [
        packed[: len(packed) // 2],  # truncated msgpack
        b"\xc1\xc1\xc1",  # never-used msgpack byte
        "a text frame",
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb(msgpack.ExtType(7, b"\x80\x04pickle")),  # ext types are refused, never unpickled
        codec.packb(missing),
        codec.packb({**req, "surprise": 1}),
        codec.packb(nan_state),
    ]


def _client(
    cid: int,
    port: int,
    expected: dict[int, np.ndarray],
    failures: list[str],
    counts: dict,
    random_request: Callable[[int], dict],
) -> None:
    try:
        ws = _connect(port)
        for i in range(REQUESTS_PER_CLIENT):
            seed = (cid + i) % 4
            # The server is stateless: the answer to a request must equal the reference for that request exactly.
            ws.send(codec.packb(random_request(seed)))
            reply = ws.recv(timeout=60)
            if not isinstance(reply, bytes):
                failures.append(f"client {cid} req {i}: valid request got error {reply[:200]}")
                continue
            actions = codec.unpackb(reply)["actions"]
            if actions.shape != expected[seed].shape or not np.allclose(actions, expected[seed], atol=1e-4):
                failures.append(f"client {cid} req {i}: wrong actions")
            counts["ok"].append(1)  # list.append is atomic across threads; += on a dict value is not
            bad = _bad_frames(random_request(seed))[(cid + i) % 8]
            ws.send(bad)
            err = ws.recv(timeout=60)
            if not isinstance(err, str):
                failures.append(
                    f"client {cid} req {i}: invalid frame #{(cid + i) % 8} not answered with an error"
                )
            counts["errors"].append(1)
            if cid % 4 == 0 and i % 4 == 3:  # abrupt disconnect: drop the TCP socket mid-request
                ws.send(codec.packb(random_request(seed)))
                ws.socket.close()
                ws = _connect(port)
            if cid % 4 == 1 and i % 6 == 5:  # oversized message: that connection is closed with 1009
                ws.send(b"\x00" * (1024 * 1024 + 10))
                try:
                    ws.recv(timeout=30)
                    failures.append(f"client {cid}: oversized message was answered")
                except websockets.ConnectionClosed as e:
                    if e.rcvd is None or e.rcvd.code != 1009:
                        failures.append(f"client {cid}: oversized message closed with {e.rcvd}")
                ws = _connect(port)
            if cid % 4 == 2 and i % 4 == 1:  # wrong / missing API key: refused at the handshake
                for headers in ({"Authorization": "Api-Key wrong"}, None):
                    try:
                        _connect(port, headers).close()
                        failures.append(f"client {cid}: connection with bad key {headers} accepted")
                    except websockets.InvalidStatus as e:
                        if e.response.status_code != 401:
                            failures.append(f"client {cid}: bad key got HTTP {e.response.status_code}")
        ws.close()
    except Exception as e:  # recorded, then asserted in the main thread
        failures.append(f"client {cid}: {type(e).__name__}: {e}")


def _round(
    port: int, expected: dict[int, np.ndarray], random_request: Callable[[int], dict]
) -> tuple[list[str], dict]:
    failures: list[str] = []
    counts: dict[str, list[int]] = {"ok": [], "errors": []}
    threads = [
        threading.Thread(target=_client, args=(c, port, expected, failures, counts, random_request))
        for c in range(N_CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return failures, counts


def test_abuse_16_clients(policy_dir: Path, tmp_path: Path, random_request: Callable[[int], dict]) -> None:
    log_path = tmp_path / "serve.log"
    proc, port = _start_server(policy_dir, log_path)
    try:
        ref = _connect(port)  # reference answers from a quiet, unbatched moment
        expected = {}
        for seed in range(4):
            ref.send(codec.packb(random_request(seed)))
            expected[seed] = codec.unpackb(ref.recv(timeout=60))["actions"]
        ref.close()

        # Warm-up round: allocator pools, thread stacks and websockets buffers reach their steady size.
        failures, counts = _round(port, expected, random_request)
        assert not failures, failures[:10]
        rss_before = _rss_kib(proc.pid)
        for _ in range(2):
            failures, counts = _round(port, expected, random_request)
            assert not failures, failures[:10]
        rss_after = _rss_kib(proc.pid)
        assert len(counts["ok"]) == len(counts["errors"]) == N_CLIENTS * REQUESTS_PER_CLIENT
        assert proc.poll() is None, "server died"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
        assert rss_after - rss_before < 40 * 1024, f"server RSS grew {rss_before} -> {rss_after} KiB"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("lbm serve did not stop on SIGTERM")
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert "server stopped" in log and "Traceback" not in log, log[-3000:]
    assert re.search(r'disconnected \{"requests": \d+, "errors": \d+, "mean_infer_ms"', log)
