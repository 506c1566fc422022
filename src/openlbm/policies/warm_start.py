"""Warm start: copy a pretrained policy's weights into a new policy for fine-tuning, key by key, with a report of
what was loaded, left new and dropped (``init_report.json``)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openlbm.policies.pretrained import load_weights

log = logging.getLogger(__name__)

PER_EMBODIMENT = ("state_in", "camera_emb", "embodiment_token", "action_in", "action_out")
"""``model.<these>.<embodiment>.*`` parameters belong to one embodiment (new ones may be reinitialised)."""
AUXILIARY_HEADS = ("latent_in", "latent_out")
"""``model.<these>.*``: the latent-action head, only trained on latent labels; a source without it leaves it new."""


@dataclass(frozen=True)
class InitReport:
    """What :meth:`LBMPolicy.init_from` did, key by key (state-dict names)."""

    source: str
    """The policy dir the weights came from."""
    loaded: list[str]
    """Keys copied from the source."""
    new: list[str]
    """Keys left freshly initialised (parameters of embodiments the source lacks)."""
    dropped: list[str]
    """Source keys this policy has no place for (e.g. heads of embodiments that are not fine-tuned)."""
    source_embodiments: list[str]
    """Embodiment names the source policy was trained on."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def init_from(policy: Any, directory: str | Path) -> InitReport:
    """Copy weights from another policy dir into ``policy`` (an :class:`~openlbm.policies.lbm.LBMPolicy`) for
    fine-tuning; returns what was loaded, new and dropped.

    Parameters of embodiments the source lacks, an auxiliary head (:data:`AUXILIARY_HEADS`) it lacks, and an
    embodiment's projections that are 0 wide there (it was pretrained on video without actions or state) stay
    freshly initialised ("new"); the source's tensors this policy
    has no place for (e.g. heads of embodiments not fine-tuned) are "dropped". Every other key must exist with
    the same shape (else a ValueError lists all mismatches). Only weights are copied: the policy's normalization
    stats are those it was built with (``openlbm.train.finetune.policy_stats`` chooses them)."""
    d = Path(directory)
    src_cfg, src_embs, _ = policy.read_dir(d)
    if src_cfg.language != policy.config.language:
        log.warning("init_from %s: text encoder differs (%s vs %s)", d, src_cfg.language, policy.config.language)
    src = load_weights(d / "model.safetensors")
    src_names = {e.name for e in src_embs}
    # an embodiment seen only in data without actions (or state) has 0-wide projections there: fresh here
    dimless = {e.name for e in src_embs if e.action_dim == 0 or e.state_dim == 0}
    own = policy.state_dict()
    new_keys, missing, shapes = [], [], []
    for k, v in own.items():
        parts = k.split(".")
        per_emb = len(parts) > 2 and parts[1] in PER_EMBODIMENT
        if k not in src:
            is_new_head = (per_emb and parts[2] not in src_names) or (len(parts) > 1 and parts[1] in AUXILIARY_HEADS)
            (new_keys if is_new_head else missing).append(k)
        elif src[k].shape != v.shape:
            if per_emb and parts[2] in dimless and 0 in src[k].shape:
                new_keys.append(k)
                src.pop(k)
                continue
            shapes.append(f"{k}: ours {tuple(v.shape)} vs {d.name} {tuple(src[k].shape)}")
    if missing or shapes:
        raise ValueError(
            f"cannot init from {d}: {len(shapes)} shape mismatches {shapes[:12]}; {len(missing)} keys missing "
            f"there {missing[:12]} (different architecture? compare its config.json with this policy's)"
        )
    policy.load_state_dict({k: src.get(k, v) for k, v in own.items()})
    report = InitReport(
        source=str(d),
        loaded=sorted(k for k in own if k in src),
        new=sorted(new_keys),
        dropped=sorted(k for k in src if k not in own),
        source_embodiments=sorted(src_names),
    )
    log.info("init_from %s: %d tensors loaded, %d new %s, %d dropped %s", d, len(report.loaded),
             len(report.new), report.new[:8], len(report.dropped), report.dropped[:8])
    return report
