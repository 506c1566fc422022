"""``lbm train <preset> [overrides]``: each preset is a subcommand whose flags override any config field.

    lbm train debug --dataset data/pick --steps 20
    lbm train small --dataset data/a --dataset data/b --optim.lr 3e-4 --run-dir runs/ab
    lbm train small --dataset data/metaworld --mixture oxe.json   # sources with embodiment / rename / image_size
    torchrun --nproc_per_node 2 -m openlbm.cli train small --dataset data/a
    lbm finetune small --init-from runs/pre --dataset data/new --finetune.freeze vision

``lbm finetune`` is ``lbm train`` with the fine-tuning presets and a required ``--init-from``: one loop.

The command composes two packages: the trainer (``openlbm.train``) and, with ``--eval-every``, in-training
evaluation in simulation (``openlbm.eval.train_eval.TrainEvalFn``, passed to the loop as its ``EvalFn``). It lives
outside both so that ``train/`` never imports ``eval/`` (tests/test_layering.py checks it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

from openlbm.configs.presets import FINETUNE_PRESETS, PRESETS
from openlbm.configs.train import LAMTrainConfig, TrainConfig
from openlbm.data.imagetext import ImageTextConfig
from openlbm.data.mixture import SourceConfig, read_sources
from openlbm.envs.suites import Suite


def _choices(presets: dict) -> object:
    # each preset's own config class (TrainConfig, or LAMTrainConfig whose model is a latent action model)
    return Union[  # noqa: UP007 -- tyro needs a runtime Union of annotated subcommands
        tuple(
            Annotated[type(cfg), tyro.conf.subcommand(name, default=cfg, description=(make.__doc__ or "").strip())]
            for name, make in presets.items()
            for cfg in (make(),)
        )
    ]


_PresetChoice = _choices(PRESETS)
_FinetuneChoice = _choices(FINETUNE_PRESETS)


def with_datasets(cfg: TrainConfig, datasets: tuple[Path, ...], mixture: Path | None = None) -> TrainConfig:
    """Append the sources of the ``--mixture`` file (:func:`~openlbm.data.mixture.read_sources`), then one
    equally-weighted source per ``--dataset`` path, to ``cfg.data.sources``."""
    extra = (*(read_sources(mixture) if mixture is not None else ()), *(SourceConfig(root=Path(p)) for p in datasets))
    if not extra:
        return cfg
    return replace(cfg, data=replace(cfg.data, sources=(*cfg.data.sources, *extra)))


def camera_size(cfg: TrainConfig) -> tuple[int, int]:
    """The image size the first dataset of the mixture is trained at (its ``image_size``, else its cameras')."""
    from openlbm.data.dataset import DatasetMeta
    from openlbm.errors import UserError

    if not cfg.data.sources:
        raise UserError("--image-text needs the robot data too (--dataset or --mixture): its cameras set the size")
    src = cfg.data.sources[0]
    if src.image_size is not None:
        return tuple(src.image_size)  # type: ignore[return-value]
    meta = DatasetMeta(src.root)
    if not meta.camera_keys:
        raise UserError(f"{src.root}: no camera in this dataset, so no image size for --image-text")
    h, w = meta.features[meta.camera_keys[0]].shape[:2]
    return int(h), int(w)


def train_with_eval(
    cfg: TrainConfig, eval_tasks: str | None, eval_episodes: int, eval_seed: int, allow_config_change: bool = False,
    **eval_options: Any,
) -> Path:
    """Train ``cfg``; with ``cfg.eval_every > 0`` and tasks given, roll the EMA policy out on ``eval_tasks`` every
    ``eval_every`` steps (``TrainEvalFn``: fixed starts from ``eval_seed``, records in ``run_dir/train_eval``; its
    env workers are stopped when training ends). ``eval_options`` go to ``TrainEvalFn`` (``num_workers``, ...);
    ``allow_config_change`` lets a resumed run differ from its ``config.json`` (see ``train``)."""
    from openlbm.train.loop import train

    if cfg.eval_every == 0 or eval_tasks is None:
        return train(cfg, allow_config_change=allow_config_change)
    from openlbm.eval.train_eval import TrainEvalFn

    with TrainEvalFn(eval_tasks, eval_episodes, seed=eval_seed, out_dir=cfg.run_dir / "train_eval",
                     **eval_options) as eval_fn:
        return train(cfg, eval_fn=eval_fn, allow_config_change=allow_config_change)


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
@dataclass(frozen=True)
class Train:
    """Train a policy. Pick a preset (debug, small, quickstart, base, large; lam, lam-debug train a latent action
    model), then override any field."""

    config: tyro.conf.OmitSubcommandPrefixes[Annotated[_PresetChoice, tyro.conf.arg(name="")]]
    """The training config, starting from the chosen preset."""
    dataset: tyro.conf.UseAppendAction[tuple[Path, ...]] = ()
    """A dataset root to train on (repeat the flag for a mixture); added to ``data.sources`` with weight 1."""
    mixture: Path | None = None
    """A JSON file listing mixture sources, each ``{"root", "weight", "embodiment", "rename", "image_size"}`` (the
    fields of ``SourceConfig``; the shape of ``data.sources`` in a run's config.json; relative roots are relative to
    the file): to name a dataset's embodiment, map its cameras and keys, resize its images. Combines with
    ``--dataset``."""
    image_text: tyro.conf.UseAppendAction[tuple[str, ...]] = ()
    """WebDataset image-caption shards (path, glob, brace pattern or folder; repeatable) to co-train on: sets
    ``image_text`` with these shards at the cameras' image size (vision-language alignment, weighted by
    ``--objectives.image-text``)."""
    image_text_batch_size: int = 32
    """Image-caption pairs per micro-batch with ``--image-text``."""
    eval_tasks: str | None = None
    """Tasks of ``--eval-suite`` (set name or comma list) rolled out every ``--eval-every`` steps; logged as
    ``eval/*``."""
    eval_suite: Suite = "metaworld"
    """Simulation suite of ``--eval-tasks``; a policy trained on several robots is evaluated as this suite's."""
    eval_episodes: int = 5
    """Episodes per task at each in-training evaluation (fixed starts, the same at every call)."""
    allow_config_change: bool = False
    """With ``--resume``: continue even though the config differs from the run's ``config.json`` (the
    differing fields are logged and appended to ``run_dir/config_changes.jsonl``)."""
    verbose: bool = False
    """Debug-level logging."""

    def run(self) -> int:
        from openlbm.errors import UserError

        if self.finetune_only and self.config.init_from is None:
            raise UserError("lbm finetune: --init-from PATH is required (a pretrained run dir, checkpoint or policy dir)")
        logging.basicConfig(level=logging.DEBUG if self.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cfg = self.resolved()
        from openlbm.devices import check_device

        check_device(cfg.device)  # before the run dir exists
        if not cfg.data.sources:
            raise UserError("no dataset given; pass --dataset PATH (repeatable) or --mixture FILE")
        if cfg.eval_every > 0 and self.eval_tasks is None:
            raise UserError("--eval-every needs --eval-tasks (e.g. --eval-tasks quickstart)")
        if cfg.eval_every > 0 and isinstance(cfg, LAMTrainConfig):
            raise UserError("--eval-every: a latent action model is not a policy and cannot be rolled out; label a "
                            "dataset with it instead (lbm data label-latent)")
        run_dir = train_with_eval(cfg, self.eval_tasks, self.eval_episodes, eval_seed=cfg.seed + 1,
                                  allow_config_change=self.allow_config_change, suite=self.eval_suite)
        if os.environ.get("RANK", "0") == "0":
            print(f"run dir: {run_dir}")
        return 0


    @property
    def finetune_only(self) -> bool:
        return False

    def resolved(self) -> TrainConfig:
        """The preset with the command's ``--mixture``, ``--dataset`` and ``--image-text`` flags applied."""
        cfg = with_datasets(self.config, self.dataset, self.mixture)
        if not self.image_text:
            return cfg
        return replace(cfg, image_text=ImageTextConfig(
            shards=self.image_text, image_size=camera_size(cfg), batch_size=self.image_text_batch_size, seed=cfg.seed))


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
@dataclass(frozen=True)
class Finetune(Train):
    """Fine-tune a pretrained policy on new data (same loop as ``lbm train``). Pick a preset (debug, small,
    quickstart, base), give ``--init-from`` and ``--dataset``, override any field (``--finetune.freeze vision``,
    ``--finetune.trunk-lr-mult 0.5``, ``--replay PATH``). Writes ``init_report.json`` to the run dir."""

    config: tyro.conf.OmitSubcommandPrefixes[Annotated[_FinetuneChoice, tyro.conf.arg(name="")]]  # type: ignore[assignment]
    """The fine-tuning config, starting from the chosen preset."""
    replay: tyro.conf.UseAppendAction[tuple[Path, ...]] = ()
    """A pretraining dataset to mix back in (repeatable); together they make up ``--finetune.replay-fraction``
    of the samples and never enter the normalization stats."""

    @property
    def finetune_only(self) -> bool:
        return True

    def resolved(self) -> TrainConfig:
        cfg = super().resolved()
        if not self.replay:
            return cfg
        extra = tuple(SourceConfig(root=Path(p), in_stats=False) for p in self.replay)
        return replace(cfg, finetune=replace(cfg.finetune, replay=(*cfg.finetune.replay, *extra)))


COMMANDS: dict[str, type] = {"train": Train, "finetune": Finetune}
