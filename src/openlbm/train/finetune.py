"""Fine-tuning pieces of the training loop: initialise from a pretrained policy, freeze parts, per-part learning
rates, replay of pretraining data. ``lbm train`` and ``lbm finetune`` run the same loop (:mod:`openlbm.train.loop`);
with ``init_from=None`` and default :class:`~openlbm.configs.train.FinetuneConfig` all of this is a no-op.

What a fine-tuning run writes to its run dir, ``init_report.json``::

    {"source": policy dir, "loaded": [...], "new": [...], "dropped": [...], "source_embodiments": [...],
     "frozen": [...], "stats": {embodiment: "pretrained" | "fine-tuning data"},
     "stats_from": {embodiment: [the source's stats.json] or [dataset roots]}, "lr_mult": {group name: multiplier}}

Normalization. An embodiment the pretrained policy already knows keeps the pretrained policy's stats: its loaded
state/action projections were trained on data normalized that way, and quantiles recomputed from a few fine-tuning
demos would shift every input under them. New embodiments (fresh projections) take the fine-tuning data's stats, and
``FinetuneConfig.recompute_stats`` asks for those for every embodiment. A resumed run takes the stats of the
checkpoint it resumes from, whatever the source says now.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from openlbm.configs.train import FinetuneConfig, TrainConfig
from openlbm.data.mixture import DataConfig, stats_sources
from openlbm.policies.policy_dir import POLICY_DIR
from openlbm.policies.warm_start import PER_EMBODIMENT

log = logging.getLogger(__name__)

REPORT_FILE = "init_report.json"


def param_part(name: str) -> str:
    """The :data:`~openlbm.configs.train.Part` a policy parameter belongs to (by its ``named_parameters`` name)."""
    parts = name.split(".")
    if parts[0] != "model" or len(parts) < 2:
        raise ValueError(f"parameter {name!r} is not part of the LBM network (expected 'model.*')")
    if parts[1] == "vision":
        return "vision"
    if parts[1] == "language":
        return "language"
    if parts[1] in PER_EMBODIMENT:
        return "embodiment"
    # trunk.*, head.*, step_pos: the shared sequence model
    return "trunk"


def check(cfg: TrainConfig) -> None:
    """Fine-tuning knobs without a pretrained policy are a mistake, not a silent no-op."""
    if cfg.finetune.active and cfg.init_from is None:
        raise ValueError("finetune settings (freeze / learning-rate multipliers / replay) need a pretrained policy: "
                         "pass --init-from PATH (a run dir, checkpoint dir or policy dir)")


def with_replay(data: DataConfig, ft: FinetuneConfig) -> DataConfig:
    """``data`` plus the replay sources, weighted so that they make up ``replay_fraction`` of the samples.

    The fine-tuning sources keep their weights (sum ``W``); replay source ``j`` gets
    ``fraction / (1 - fraction) * W * w_j / sum(w_replay)``, and ``in_stats=False`` so normalization stays the
    fine-tuning data's.
    """
    if ft.replay_fraction > 0 and not ft.replay:
        raise ValueError("finetune.replay_fraction > 0 needs replay datasets (lbm finetune --replay PATH)")
    if ft.replay and ft.replay_fraction == 0:
        raise ValueError("replay datasets given but finetune.replay_fraction is 0: set --finetune.replay-fraction")
    if not ft.replay:
        return data
    if data.scale_weights_by_size:
        raise ValueError("finetune.replay_fraction needs data.scale_weights_by_size=False (the fraction is of samples)")
    if not data.sources:
        raise ValueError("fine-tuning needs its own datasets (--dataset PATH) besides the replay ones")
    total = sum(s.weight for s in data.sources)
    replay_total = sum(s.weight for s in ft.replay)
    if total <= 0 or replay_total <= 0:
        raise ValueError("dataset and replay weights must have positive sums")
    scale = ft.replay_fraction / (1.0 - ft.replay_fraction) * total / replay_total
    replay = tuple(replace(s, weight=s.weight * scale, in_stats=False) for s in ft.replay)
    return replace(data, sources=(*data.sources, *replay))


def freeze(policy: nn.Module, parts: tuple[str, ...]) -> list[str]:
    """Turn off gradients of every parameter in ``parts``; returns the frozen names."""
    frozen = []
    for name, p in policy.named_parameters():
        if name.startswith("model.") and param_part(name) in parts:
            p.requires_grad_(False)
            frozen.append(name)
    if parts and not frozen:
        raise ValueError(f"finetune.freeze={list(parts)} matched no parameter")
    return frozen


def param_groups(policy: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """``policy.param_groups`` split by part, each group's ``lr_mult`` times its part's multiplier.

    The policy decides weight decay and the vision backbone's rate (``policy.vision.lr_mult``); this only refines
    its groups, so a plain run (all multipliers 1) gets exactly the policy's groups.
    """
    groups = policy.param_groups(weight_decay=cfg.optim.weight_decay)
    mults = cfg.finetune.lr_mults()
    if all(m == 1.0 for m in mults.values()):
        return groups
    part_of = {id(p): param_part(n) for n, p in policy.named_parameters()}
    out = []
    for g in groups:
        by_part: dict[str, list[Any]] = {}
        for p in g["params"]:
            by_part.setdefault(part_of[id(p)], []).append(p)
        for part, params in by_part.items():
            out.append({**g, "params": params, "name": f"{g.get('name', 'group')}/{part}",
                        "lr_mult": g.get("lr_mult", 1.0) * mults.get(part, 1.0)})
    return out


PRETRAINED_STATS = "pretrained"
DATA_STATS = "fine-tuning data"


def policy_stats(cfg: TrainConfig, data: Any, source_dir: Path | None,
                 resume_from: Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The normalization stats to build the policy with, and where each embodiment's come from (module docstring).

    ``source_dir``: the pretrained policy dir when initialising from it; ``resume_from``: the checkpoint dir a
    resumed run continues from (its exported policy's stats are the run's)."""
    from openlbm.policies.config import PolicyConfig
    from openlbm.policies.lbm import LBMPolicy

    names = [e.name for e in data.embodiments]
    if not isinstance(cfg.policy, PolicyConfig):  # a latent action model reads frames only: nothing to normalize
        return dict(data.stats), {}
    if resume_from is not None and cfg.init_from is not None:
        saved = json.loads((Path(resume_from) / POLICY_DIR / "stats.json").read_text())
        return {n: saved[n] for n in names}, {}
    origin = dict.fromkeys(names, DATA_STATS)
    if source_dir is None or cfg.finetune.recompute_stats:
        return dict(data.stats), origin if source_dir is not None else {}
    _, src_embs, src_stats = LBMPolicy.read_dir(source_dir)
    src = {e.name: e for e in src_embs}
    stats = dict(data.stats)
    for e in data.embodiments:
        known = src.get(e.name)
        # an embodiment seen only without actions or state has no such stats, and 0-wide projections: fresh here
        if known is None or e.name not in src_stats or known.action_dim == 0 or known.state_dim == 0:
            continue
        if (known.state_dim, known.action_dim) == (e.state_dim, e.action_dim):
            stats[e.name], origin[e.name] = src_stats[e.name], PRETRAINED_STATS
    return stats, origin


def init_policy(policy: Any, cfg: TrainConfig, data: Any, source_dir: Path | None, report_dir: Path | None,
                stats_origin: dict[str, str] | None = None) -> None:
    """Load pretrained weights (when ``source_dir``), freeze parts, and write/log the report (when ``report_dir``).

    On resume ``source_dir`` is None: the checkpoint holds the weights, but freezing must still be applied so the
    optimizer's groups match the saved ones.
    """
    init = policy.init_from(source_dir) if source_dir is not None else None
    frozen = freeze(policy, cfg.finetune.freeze)
    if init is None or report_dir is None:
        return
    origin = stats_origin or dict.fromkeys(data.stats, DATA_STATS)
    stats_from = {e: [str(source_dir / "stats.json")] if origin.get(e) == PRETRAINED_STATS
                  else [str(p.meta.root) for p in stats_sources(e, data.dataset.parts)] for e in data.stats}
    report = {**init.to_dict(), "frozen": frozen, "stats": origin, "stats_from": stats_from,
              "lr_mult": {g["name"]: g["lr_mult"] for g in param_groups(policy, cfg)}}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log.info("fine-tuning from %s: %d tensors loaded, %d new, %d dropped, %d frozen; stats from %s (report: %s)",
             init.source, len(init.loaded), len(init.new), len(init.dropped), len(frozen), stats_from,
             report_dir / REPORT_FILE)

