"""``lbm data latent-report``: do a labelled dataset's latent action codes mean something?

Two numbers per dataset labelled by ``lbm data label-latent`` (its ``latent_action_index`` column):

- **Codebook use** over every frame: per group, how many of the ``K`` codes occur and their perplexity
  (``exp`` of the entropy of the code frequencies; ``K`` when all are used equally, 1 when one code is used:
  collapse), and the same for the joint code (all groups together).
- **Clustering by motion phase**: the normalized mutual information ``NMI = 2 I(code; phase) / (H(code) +
  H(phase))`` between the joint code of frame ``t`` and a *phase proxy* of the same frame pair ``(t, t + k)``,
  computed from ``observation.state`` alone, next to the NMI of the same codes shuffled over the frames (chance).
  The proxy: the end effector's dominant motion direction from ``t`` to ``t + k`` (``+x``/``-x``/... or ``still``
  below ``still_fraction`` of the median motion) and the gripper's change (``grip-decr`` / ``grip-incr`` beyond
  ``gripper_event`` of its range, else ``grip-low`` / ``grip-high`` against the middle of its range). Meta-World's
  scripted experts are waypoint policies (reach above, descend, close, lift, carry, ...), so each waypoint
  segment is one or a few proxy phases; the proxy is derived from the recorded state, not read from the experts.

The NMI is not an accuracy: it is 0 for codes independent of the phase and 1 when each determines the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.data import layout as L
from openlbm.types import STATE_KEY

INDEX_KEY = "latent_action_index"
PROVENANCE_PATH = "meta/latent_action.json"


@dataclass(frozen=True)
class PhaseProxy:
    """Which state dims make the motion phase proxy, and its thresholds."""

    position_dims: tuple[int, ...] = (0, 1, 2)
    """``observation.state`` dims of the end-effector position (Meta-World: hand x, y, z)."""
    gripper_dim: int | None = 3
    """``observation.state`` dim of the gripper opening (Meta-World: 3); None = no gripper part."""
    still_fraction: float = 0.25
    """Motion below this fraction of the dataset's median motion over ``k`` frames counts as ``still``."""
    gripper_event: float = 0.1
    """A gripper change beyond this fraction of its q01..q99 range over ``k`` frames is an opening/closing."""


def entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of the empirical distribution of integer ``labels``."""
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """``I(a; b)`` in nats of two integer label arrays of equal length."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= len(a)
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information ``2 I / (H(a) + H(b))`` (0 when both are constant)."""
    h = entropy(a) + entropy(b)
    return 0.0 if h <= 0 else max(0.0, min(1.0, 2.0 * mutual_information(a, b) / h))


def perplexity(labels: np.ndarray) -> float:
    return float(np.exp(entropy(labels)))


def joint_code(indices: np.ndarray, codebook_size: int) -> np.ndarray:
    """``[N, G]`` code indices -> one integer per frame, ``sum_g index_g * K^g``."""
    return (indices * codebook_size ** np.arange(indices.shape[1])).sum(1)


def later_index(episode: np.ndarray, k: int) -> np.ndarray:
    """Row of frame ``min(t + k, last frame of t's episode)`` for every row (rows sorted by episode, then frame)."""
    n = len(episode)
    last = np.empty(n, dtype=np.int64)
    bounds = np.flatnonzero(np.diff(episode)) + 1
    for start, stop in zip([0, *bounds], [*bounds, n], strict=True):
        last[start:stop] = stop - 1
    return np.minimum(np.arange(n) + k, last)


def phase_labels(state: np.ndarray, episode: np.ndarray, k: int, proxy: PhaseProxy) -> tuple[np.ndarray, list[str]]:
    """The proxy phase of every frame pair ``(t, t + k)``: integer labels ``[N]`` and their names."""
    if max(proxy.position_dims, default=-1) >= state.shape[1] or (proxy.gripper_dim or 0) >= state.shape[1]:
        raise ValueError(f"phase proxy dims {proxy.position_dims} / {proxy.gripper_dim} outside observation.state's "
                         f"{state.shape[1]} dims (set --phase.position-dims / --phase.gripper-dim)")
    later = later_index(episode, k)
    names = []
    if proxy.position_dims:
        d = state[later][:, proxy.position_dims] - state[:, proxy.position_dims]  # [N, P]
        mag = np.linalg.norm(d, axis=1)
        axis = np.abs(d).argmax(1)
        axes = "xyz" if len(proxy.position_dims) == 3 else [f"d{i}" for i in proxy.position_dims]
        sign = np.where(d[np.arange(len(d)), axis] >= 0, "+", "-")
        motion = np.array([f"{s}{axes[a]}" for s, a in zip(sign, axis, strict=True)], dtype=object)
        motion[mag < proxy.still_fraction * np.median(mag)] = "still"
        names.append(motion)
    if proxy.gripper_dim is not None:
        g = state[:, proxy.gripper_dim]
        lo, hi = np.quantile(g, [0.01, 0.99])
        dg = g[later] - g
        grip = np.where(g < (lo + hi) / 2, "grip-low", "grip-high").astype(object)
        grip[dg < -proxy.gripper_event * (hi - lo)] = "grip-decr"
        grip[dg > proxy.gripper_event * (hi - lo)] = "grip-incr"
        names.append(grip)
    if not names:
        raise ValueError("the phase proxy needs position dims or a gripper dim")
    full = np.array([" ".join(parts) for parts in zip(*names, strict=True)], dtype=object)
    uniq, labels = np.unique(full, return_inverse=True)
    return labels, [str(u) for u in uniq]


def _columns(root: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """The dataset's meta and the columns the report reads (codes, state if any, indices), in frame order."""
    from openlbm.data.dataset import DatasetMeta, LowDimStore

    meta = DatasetMeta(root)
    if INDEX_KEY not in meta.features:
        raise L.DatasetError(f"{L.where(root / L.INFO_PATH, field=INDEX_KEY)}: feature missing; label the dataset "
                             "first (lbm data label-latent)")
    store = LowDimStore(meta)
    store.keys = [k for k in (INDEX_KEY, STATE_KEY, "index", "episode_index") if k in meta.features]  # no more
    return meta, store.cols


def latent_report(root: Path | str, proxy: PhaseProxy | None = None, frame_gap: int | None = None,
                  permutations: int = 20, seed: int = 0) -> dict[str, Any]:
    """Codebook use and phase clustering of dataset ``root``'s latent action codes (see the module docstring).

    ``frame_gap``: ``k`` of the phase proxy (default: the labelling model's, from ``meta/latent_action.json``)."""
    from openlbm.jsonio import read_json

    root, proxy = Path(root), proxy or PhaseProxy()
    provenance = read_json(root / PROVENANCE_PATH) if (root / PROVENANCE_PATH).is_file() else {}
    k = frame_gap or provenance.get("frame_gap")
    if not k:
        raise ValueError(f"{root / PROVENANCE_PATH} missing: pass --frame-gap (the k the labels were made with)")
    meta, cols = _columns(root)
    indices = cols[INDEX_KEY].astype(np.int64)  # [N, G]
    size = int(provenance.get("codebook_size") or indices.max() + 1)
    joint = joint_code(indices, size)
    out: dict[str, Any] = {
        "dataset": str(root), "frames": len(joint), "frame_gap": int(k), "codebook_size": size,
        "groups": [{"codes_used": int(len(np.unique(indices[:, g]))), "perplexity": perplexity(indices[:, g])}
                   for g in range(indices.shape[1])],
        "joint": {"codes_used": int(len(np.unique(joint))), "possible": size ** indices.shape[1],
                  "perplexity": perplexity(joint)},
    }
    if STATE_KEY not in meta.features:
        out["phase"] = None  # video without state: no proxy to compare with
        return out
    state = cols[STATE_KEY].reshape(len(joint), -1).astype(np.float64)
    phase, names = phase_labels(state, cols["episode_index"].reshape(-1), int(k), proxy)
    rng = np.random.default_rng(seed)
    chance = [nmi(rng.permutation(joint), phase) for _ in range(permutations)]
    out["phase"] = {
        "proxy": {"position_dims": list(proxy.position_dims), "gripper_dim": proxy.gripper_dim,
                  "still_fraction": proxy.still_fraction, "gripper_event": proxy.gripper_event},
        "phases": len(names), "nmi": nmi(joint, phase), "nmi_chance_mean": float(np.mean(chance)),
        "nmi_chance_max": float(np.max(chance)), "permutations": permutations,
        "nmi_per_group": [nmi(indices[:, g], phase) for g in range(indices.shape[1])],
        "table": _phase_table(joint, phase, names),
    }
    return out


def _phase_table(joint: np.ndarray, phase: np.ndarray, names: list[str], rows: int = 12) -> list[dict[str, Any]]:
    """The most frequent phases, each with its most frequent code and that code's share of the phase's frames."""
    out = []
    for p in np.argsort(-np.bincount(phase))[:rows]:
        codes, counts = np.unique(joint[phase == p], return_counts=True)
        out.append({"phase": names[p], "frames": int(counts.sum()), "top_code": int(codes[counts.argmax()]),
                    "top_code_share": float(counts.max() / counts.sum())})
    return out
