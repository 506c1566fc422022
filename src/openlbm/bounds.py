"""One notion of a valid value: the bound on ``|x|`` that validation, training and the policy server all apply.

Robot states and actions are positions, angles, velocities and gripper commands in SI-like units (``|x|`` of order
1..1e3). A value beyond :data:`DEFAULT_MAX_ABS` is a unit or encoding error: in a dataset it swamps the
normalization stats (a state of 1e30 made the stored std about 1.9e29, so the normalized state carried nothing),
and on the wire it overflows the network's float32 activations into non-finite actions. ``lbm data validate`` and
``lbm train`` (through :func:`openlbm.data.validate.require_valid`) refuse such data, naming file, episode, frame and
feature; ``lbm serve`` refuses such a state in a request.

A dataset whose features legitimately go further declares its own bound per feature in ``meta/info.json``:
``"features": {"observation.state": {"dtype": "float32", "shape": [7], "max_abs": 1e8, ...}}``.
Leaf module (numpy only): the torch-free serving protocol imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_MAX_ABS = 1e6
"""Largest accepted ``|value|`` of a bounded feature that declares no ``max_abs`` of its own."""
BOUNDED_KEYS = ("observation.state", "action")
"""Features bounded by default (others, e.g. ``latent_action``, only when their entry declares ``max_abs``)."""
MAX_ABS_FIELD = "max_abs"
"""The per-feature override's name in a ``meta/info.json`` feature entry."""


def max_abs(key: str, feature: Mapping[str, Any] | None = None) -> float | None:
    """The bound on ``|x|`` for feature ``key`` (its ``info.json`` entry ``feature``): the entry's ``max_abs``,
    else :data:`DEFAULT_MAX_ABS` for :data:`BOUNDED_KEYS`, else ``None`` (unbounded). Raises ``ValueError`` for a
    declared bound that is not a positive number."""
    declared = (feature or {}).get(MAX_ABS_FIELD)
    if declared is None:
        return DEFAULT_MAX_ABS if key in BOUNDED_KEYS else None
    if isinstance(declared, bool) or not isinstance(declared, int | float) or not declared > 0:
        raise ValueError(f"{key}: {MAX_ABS_FIELD} must be a positive number, got {declared!r}")
    return float(declared)


def first_out_of_bounds(values: np.ndarray, bound: float) -> tuple[int, int, float] | None:
    """``(row, dim, value)`` of the first entry of ``values`` ``[N, ...]`` with ``|value| > bound`` (dims
    flattened), or ``None``. NaN compares False: finiteness is checked on its own, with its own message."""
    values = np.asarray(values)
    flat = values.reshape(len(values), int(np.prod(values.shape[1:])))  # [N, ...] -> [N, D] (also for N = 0)
    with np.errstate(invalid="ignore"):
        bad = np.abs(flat) > bound
    if not bad.any():
        return None
    row, dim = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row), int(dim), float(flat[row, dim])
