"""Make ``convert_helpers`` importable (``--import-mode=importlib`` puts no test folder on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
