"""``--device`` checked once, before a command creates anything: one line naming the flag instead of a traceback
from deep inside torch (``tpu``) or a run dir left behind by a start that could never work (``cuda`` without CUDA).
"""

from __future__ import annotations

from openlbm.errors import UserError

KINDS = ("cpu", "cuda", "mps")
"""Device types a command accepts (besides ``auto``); others parse in torch but no openlbm code path uses them."""


def check_device(device: str, flag: str = "--device") -> None:
    """Raise :class:`UserError` unless ``device`` is ``auto``, ``cpu``, or a CUDA/MPS device this machine has."""
    if device == "auto":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in KINDS:
        raise UserError(f"{flag} {device}: unknown device (use auto, cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device}: CUDA is not available on this machine (torch.cuda.is_available() is "
                            "False); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} {device}: MPS is not available on this machine; use --device cpu or auto")
