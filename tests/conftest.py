"""Make the shared test helpers in this folder (``browser``) importable: ``--import-mode=importlib`` puts no test
folder on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
