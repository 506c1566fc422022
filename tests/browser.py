"""Open an HTML report in headless Chromium and report what actually decoded (shared by the report tests).

A capability test that skips in CI is a failing test, so a missing browser fails with how to get one.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

_PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images].map(i => i.naturalWidth);
  const vids = [...document.querySelectorAll('video')].map(v => [v.readyState, v.videoWidth, v.error ? v.error.code : 0]);
  document.body.setAttribute('data-probe', JSON.stringify({imgs, vids}));
}, 1500));
</script>"""


def render_in_chromium(report: Path, tmp_path: Path, budget_ms: int = 5000) -> tuple[dict[str, Any], str]:
    """Load ``report`` in headless Chromium; returns (``{"imgs": [naturalWidth...], "vids": [[readyState,
    videoWidth, error]...]}``, the rendered DOM)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "chromium is not on PATH: `make system-deps` installs it (apt, as root)"
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--virtual-time-budget={budget_ms}", "--dump-dom",
           probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m is not None, f"the page did not finish loading in Chromium; DOM starts: {dom[:300]!r}"
    return json.loads(html.unescape(m.group(1))), dom
