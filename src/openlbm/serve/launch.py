"""Start ``lbm serve`` as a child process on a free loopback port (scripts, benchmarks, tests).

A separate process, not a thread, so that the client and the server never share a GIL: the timings and the
memory readings of the server are then its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_READY = re.compile(r"serving on ws://127\.0\.0\.1:(\d+)")


def spawn_server(
    policy_dir: Path, log_path: Path, args: Sequence[str] = (), timeout_s: float = 120.0
) -> tuple[subprocess.Popen, int]:
    """Run ``lbm serve --policy policy_dir --port 0 *args`` with its output in ``log_path``; wait until it listens.

    Returns the process and the port it bound. Raises ``RuntimeError`` with the log's tail if the server exits
    early or does not come up within ``timeout_s``.
    """
    cmd = [sys.executable, "-m", "openlbm.cli", "serve", "--policy", str(policy_dir), "--port", "0", *args]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = _READY.search(log_path.read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"lbm serve exited early:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"lbm serve did not come up in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
