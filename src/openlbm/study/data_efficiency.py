"""``lbm study data-efficiency``: what pretraining buys on new tasks, measured.

For every demo count ``n`` (per task) and training seed, two runs with the same step budget, batch size,
architecture and demos: *scratch* (random init) and *fine-tuned* from the pretrained policy. Optionally, a
pretraining-scale curve: fine-tune from several pretrained policies at one count. Every run is evaluated on the same
fixed initial states (``openlbm.eval.runner``), so episodes pair up by initial state across runs.

Layout of the study folder (``--out``)::

    study.json                        the study's identity (a re-run must agree)
    data/                             scripted demos of the fine-tuning tasks (max(counts) per task), + data.done
    runs/<arm>-n<count>-s<seed>/      arm = scratch | pre0 (the main pretrained policy) | pre1, pre2 ... (scale)
        train/                        a normal run dir (lbm train / lbm finetune layout)
        eval/                         a normal eval dir (records, summary)
    results.json, report.html         written by :mod:`openlbm.study.report`

Demo subsets are nested: the ``n``-demo set of a task is its first ``n`` episodes in generation order (the
generator keeps the first successes of a fixed attempt order), selected from the one dataset by episode index.

Resuming: a run whose eval is complete is skipped; a run with checkpoints resumes its training; an unfinished eval
resumes from its records. Sharding: run ``j`` (in :func:`plan_runs` order) belongs to shard ``j % n``; shards come
from ``--shard i/n`` or torchrun's ``RANK``/``WORLD_SIZE`` (each rank then trains its runs on its own, not DDP).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

DONE_MARKER = "data.done"


@dataclass(frozen=True)
class StudyConfig:
    """A data-efficiency study: pretrained vs from-scratch at several demo counts, one resumable folder."""

    pretrained: tuple[Path, ...]
    """Pretrained policies (run dir, checkpoint dir or policy dir). The first is fine-tuned at every count; all
    of them (with scratch as "no pretraining") make the pretraining-scale curve at ``scale_count``."""
    out: Path = Path("runs/study")
    """The study folder (see the module docstring); re-running with the same folder continues."""
    tasks: str = "ml45_test"
    """Fine-tuning tasks (a task set such as ``ml45_test`` / ``easy_heldout`` / ``aloha``, or comma-separated names),
    all of ``suite``."""
    suite: Literal["metaworld", "aloha"] = "metaworld"
    """Simulation suite of the fine-tuning tasks. When the pretrained policy has no embodiment of this suite's
    robot, the study measures transfer to a new embodiment: the fine-tuned arm's projections for it start fresh (as
    in ``lbm finetune``), and both arms share the pretrained policy's architecture."""
    cameras: tuple[str, ...] | None = None
    """Cameras of the fine-tuning demos; ``None`` = the pretrained policy's for this suite's robot, else the
    suite's defaults."""
    image_size: int | None = None
    """Square image size of the fine-tuning demos; ``None`` = as ``cameras``."""
    counts: tuple[int, ...] = (3, 10, 30)
    """Demonstrations per task; the subsets are nested."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds: each (count, seed) is one scratch and one fine-tuned run."""
    scale_labels: tuple[str, ...] = ()
    """Labels of the pretrained policies in the scale curve (e.g. ``25% 50% 100%``); default: their dir names."""
    scale_count: int | None = None
    """Demo count of the scale curve (default: the smallest of ``counts``); only used with several ``pretrained``."""
    dataset: Path | None = None
    """Use this ``lbm data generate`` dataset (>= max(counts) demos per task) instead of generating ``out/data``."""
    preset: Literal["debug", "quickstart", "small", "base"] = "quickstart"
    """Training preset of the scratch arm; the fine-tuned arm uses the fine-tuning preset of the same name."""
    steps: int | None = None
    """Optimizer steps of every run, both arms (default: the scratch preset's)."""
    batch_size: int | None = None
    """Global batch size of every run (default: the scratch preset's)."""
    eval_episodes_per_task: int = 25
    """Evaluation episodes per task and run (the same initial states for every run)."""
    eval_seed: int = 1
    """Base seed of the evaluation's initial states (``openlbm.eval.runner.episode_seed``)."""
    demo_seed: int = 0
    """Base seed of the scripted demonstrations."""
    max_steps: int | None = None
    """Episode time limit (demos and evaluation); ``None`` = the suite's default (200 Meta-World, 400 ALOHA)."""
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    """Simulator worker processes for demo generation and evaluation."""
    device: str = "auto"
    """Torch device for training and evaluation."""
    alpha: float = 0.05
    """Significance level of the paired tests and of the data-multiplier rule."""
    shard: str | None = None
    """``i/n``: run only every n-th run starting at i (default: torchrun's RANK/WORLD_SIZE, else all runs)."""
    report_only: bool = False
    """Only (re)write the report from the runs finished so far."""

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise ValueError("the study needs at least one pretrained policy (--pretrained PATH)")
        if not self.counts or min(self.counts) < 1 or len(set(self.counts)) != len(self.counts):
            raise ValueError(f"counts must be distinct positive demo counts, got {list(self.counts)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.scale_labels and len(self.scale_labels) != len(self.pretrained):
            raise ValueError(f"scale_labels has {len(self.scale_labels)} labels for {len(self.pretrained)} pretrained")
        if self.eval_episodes_per_task < 1:
            raise ValueError(f"eval_episodes_per_task must be >= 1, got {self.eval_episodes_per_task}")

    @property
    def max_count(self) -> int:
        return max(self.counts)

    @property
    def scale_at(self) -> int:
        return self.scale_count if self.scale_count is not None else min(self.counts)

    def labels(self) -> list[str]:
        return list(self.scale_labels) or [Path(p).name for p in self.pretrained]

    def identity(self) -> dict[str, Any]:
        """What a re-run of the same folder must agree on (more seeds or counts may be added)."""
        from openlbm.jsonio import to_jsonable

        keep = ("pretrained", "tasks", "suite", "cameras", "image_size", "dataset", "preset", "steps", "batch_size",
                "eval_episodes_per_task", "eval_seed", "demo_seed")
        return {**{k: to_jsonable(getattr(self, k)) for k in keep}, "max_steps": self.episode_steps}

    @property
    def episode_steps(self) -> int:
        """``max_steps``, or the suite's default."""
        from openlbm.envs.suites import env_config

        return self.max_steps if self.max_steps is not None else int(env_config(self.suite).max_steps)


@dataclass(frozen=True)
class Run:
    """One training + evaluation of the study."""

    arm: str
    """``scratch`` or ``pre<i>`` (fine-tuned from ``pretrained[i]``)."""
    count: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}-n{self.count:03d}-s{self.seed}"

    @property
    def pretrained_index(self) -> int | None:
        return None if self.arm == "scratch" else int(self.arm[3:])


def plan_runs(cfg: StudyConfig) -> list[Run]:
    """Every run, in a fixed order: per seed and count, scratch then pre0; then the scale curve's extra runs."""
    runs = [Run(arm, n, s) for s in cfg.seeds for n in sorted(cfg.counts) for arm in ("scratch", "pre0")]
    if len(cfg.pretrained) > 1:
        for s in cfg.seeds:
            extra = [Run("scratch", cfg.scale_at, s), Run("pre0", cfg.scale_at, s)]
            extra += [Run(f"pre{i}", cfg.scale_at, s) for i in range(1, len(cfg.pretrained))]
            runs += [r for r in extra if r not in runs]
    return runs


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); ``None`` -> torchrun's (RANK, WORLD_SIZE), or (0, 1)."""
    if shard is None:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {shard}: need 0 <= i < n")
    return i, n


def episodes_by_task(root: Path) -> dict[str, list[int]]:
    """Task name -> its episode indices in generation order (from ``meta/generation_attempts.jsonl``)."""
    from openlbm.envs.generate import ATTEMPTS_FILE

    path = Path(root) / ATTEMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the study needs a dataset made by `lbm data generate` (it "
                                "records which task each episode is)")
    out: dict[str, list[int]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{lineno}: not a JSON line (a torn write? re-run `lbm data generate` on it)") from None
        if rec.get("episode_index") is not None:
            out.setdefault(str(rec["task"]), []).append(int(rec["episode_index"]))
    return {t: sorted(eps) for t, eps in out.items()}


def demo_subset(by_task: dict[str, list[int]], tasks: list[str], count: int, root: Path) -> tuple[int, ...]:
    """The first ``count`` episodes of every task (nested in ``count``); errors if a task has fewer."""
    short = {t: len(by_task.get(t, [])) for t in tasks if len(by_task.get(t, [])) < count}
    if short:
        raise ValueError(f"{root}: fewer than {count} demos for {short} (regenerate with more episodes per task)")
    return tuple(sorted(e for t in tasks for e in by_task[t][:count]))


def pretrained_policy(cfg: StudyConfig, index: int) -> Path:
    from openlbm.policies.policy_dir import resolve_policy_dir

    return resolve_policy_dir(cfg.pretrained[index])


def _reference_spec(cfg: StudyConfig) -> tuple[Any, tuple[str, ...], int]:
    """The main pretrained policy's config, and the fine-tuning demos' cameras and image size (see
    ``StudyConfig.cameras``). The other pretrained policies (the scale curve) must have the same embodiments."""
    from openlbm.envs.suites import env_config
    from openlbm.policies.lbm import LBMPolicy

    pol_cfg, embs, _ = LBMPolicy.read_dir(pretrained_policy(cfg, 0))
    for i in range(1, len(cfg.pretrained)):
        _, other, _ = LBMPolicy.read_dir(pretrained_policy(cfg, i))
        if [e.to_dict() for e in other] != [e.to_dict() for e in embs]:
            raise ValueError(f"{cfg.pretrained[i]}: embodiments {[e.name for e in other]} differ from "
                             f"{cfg.pretrained[0]}'s {[e.name for e in embs]} (a scale curve compares like with like)")
    fresh = env_config(cfg.suite).embodiment()
    default = next((e for e in embs if e.name == fresh.name), fresh)
    cameras = tuple(cfg.cameras) if cfg.cameras is not None else tuple(default.cameras)
    height, width = default.image_size
    if cfg.image_size is None and height != width:
        raise ValueError(f"the {default.name} images are {default.image_size}; demo generation makes square images "
                         "(pass --image-size)")
    return pol_cfg, cameras, cfg.image_size if cfg.image_size is not None else int(height)


def prepare_data(cfg: StudyConfig, cameras: tuple[str, ...], size: int, shard: tuple[int, int]) -> Path:
    """The fine-tuning dataset: ``cfg.dataset``, or generated into ``out/data`` by shard 0 (others wait for it)."""
    if cfg.dataset is not None:
        return cfg.dataset
    root, marker = cfg.out / "data", cfg.out / DONE_MARKER
    if marker.is_file():
        return root
    if shard[0] != 0:
        log.info("waiting for shard 0 to generate %s", root)
        while not marker.is_file():
            time.sleep(5.0)
        return root
    from openlbm.envs.generate import GenerateConfig, generate_demos

    generate_demos(GenerateConfig(
        out=root, tasks=cfg.tasks, episodes_per_task=cfg.max_count, cameras=cameras, size=size,
        max_steps=cfg.episode_steps, workers=cfg.workers, seed=cfg.demo_seed, suite=cfg.suite, progress=False,
    ))
    marker.write_text(json.dumps({"root": str(root)}) + "\n")
    return root


def train_config(cfg: StudyConfig, run: Run, policy_cfg: Any, dataset: Path, episodes: tuple[int, ...]) -> Any:
    """The run's TrainConfig: same architecture, steps, batch and demos for both arms; the fine-tuned arm starts
    from the pretrained weights with the fine-tuning preset's learning rate and warmup."""
    from openlbm.configs.presets import preset
    from openlbm.data.mixture import SourceConfig

    scratch = preset(cfg.preset)
    base = scratch if run.pretrained_index is None else preset(cfg.preset, finetune=True)
    run_dir = cfg.out / "runs" / run.name / "train"
    return replace(
        base,
        policy=policy_cfg,
        data=replace(base.data, sources=(SourceConfig(root=dataset, episodes=episodes),)),
        run_dir=run_dir,
        steps=cfg.steps or scratch.steps,
        batch_size=cfg.batch_size or scratch.batch_size,
        checkpoint=replace(base.checkpoint, keep_last_k=1),
        log=replace(base.log, progress=False),
        device=cfg.device,
        seed=run.seed,
        resume=(run_dir / "checkpoints" / "latest").is_file(),
        init_from=None if run.pretrained_index is None else pretrained_policy(cfg, run.pretrained_index),
        # every run of the study reads one cache per (dataset, encoder): built by the first, reused by the rest
        feature_cache=cfg.out / "features",
    )


def eval_config(cfg: StudyConfig, run: Run) -> Any:
    from openlbm.eval.runner import EvalConfig

    return EvalConfig(
        policy=str(cfg.out / "runs" / run.name / "train"), out=cfg.out / "runs" / run.name / "eval", suite=cfg.suite,
        tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes_per_task, seed=cfg.eval_seed, num_workers=cfg.workers,
        max_steps=cfg.episode_steps, device=cfg.device, record_video=False, rank=0, world_size=1, progress=False,
        report=False,
    )


def eval_complete(cfg: StudyConfig, run: Run) -> bool:
    from openlbm.eval.records import CONFIG_FILE, EvalSummary

    out = cfg.out / "runs" / run.name / "eval"
    return (out / CONFIG_FILE).is_file() and EvalSummary.load(out).complete


def execute_run(cfg: StudyConfig, run: Run, policy_cfg: Any, dataset: Path, episodes: tuple[int, ...]) -> None:
    """Train (or resume, or skip when trained) and evaluate (or resume) one run."""
    from openlbm.eval.runner import evaluate
    from openlbm.policies.policy_dir import read_latest
    from openlbm.train.checkpoint import step_dir_name
    from openlbm.train.loop import train

    tc = train_config(cfg, run, policy_cfg, dataset, episodes)
    latest = read_latest(tc.run_dir / "checkpoints") if (tc.run_dir / "checkpoints").is_dir() else None
    if latest is None and tc.run_dir.exists():
        # killed before its first checkpoint: nothing to resume, and the trainer refuses a dir holding a run
        log.info("%s: no checkpoint yet, restarting its training", run.name)
        shutil.rmtree(tc.run_dir)
    if latest is None or latest.name != step_dir_name(tc.steps):
        log.info("%s: training %d steps on %d episodes%s", run.name, tc.steps, len(episodes),
                 " (resuming)" if tc.resume else "")
        train(tc)
    log.info("%s: evaluating", run.name)
    evaluate(eval_config(cfg, run))


_ADDED_IDENTITY: dict[str, Any] = {"suite": "metaworld", "cameras": None, "image_size": None}
"""Identity keys a study folder written before they existed lacks, with the value that folder ran with."""


def check_identity(cfg: StudyConfig) -> None:
    """Refuse a folder holding a study with other settings. Pretrained policies may be appended (a new scale point
    reuses the finished runs); the ones there keep their order, since run names ``pre<i>`` index them."""
    path = cfg.out / "study.json"
    ident = cfg.identity()
    if path.is_file():
        old = {**_ADDED_IDENTITY, **json.loads(path.read_text())}
        before = old.get("pretrained") or []
        changed = {k: (old.get(k), v) for k, v in ident.items() if k != "pretrained" and old.get(k) != v}
        if ident["pretrained"][: len(before)] != before:
            changed["pretrained"] = (before, ident["pretrained"])
        if changed:
            raise ValueError(f"{cfg.out} holds a study with other settings {changed} (old, new); use another --out "
                             "(pretrained policies may only be appended)")
        if len(ident["pretrained"]) == len(before):
            return
    cfg.out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".study.json.{os.getpid()}")
    tmp.write_text(json.dumps(ident, indent=1) + "\n")
    tmp.replace(path)


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) this process's share of the study, then write the report; returns its path."""
    from openlbm.envs.tasks import resolve_tasks
    from openlbm.study.report import write_study_report

    shard = parse_shard(cfg.shard)
    check_identity(cfg)
    if not cfg.report_only:
        if cfg.shard is None and shard[1] > 1:
            # torchrun ranks are shards here: each trains its own runs in one process, not one DDP job
            for key in ("WORLD_SIZE", "RANK"):
                os.environ[key] = {"WORLD_SIZE": "1", "RANK": "0"}[key]
        tasks = resolve_tasks(cfg.tasks, suite=cfg.suite)  # a typo or another suite's task fails here, not later
        policy_cfg, cameras, size = _reference_spec(cfg)
        dataset = prepare_data(cfg, cameras, size, shard)
        by_task = episodes_by_task(dataset)
        mine = [r for j, r in enumerate(plan_runs(cfg)) if j % shard[1] == shard[0]]
        for k, run in enumerate(mine, 1):
            if eval_complete(cfg, run):
                log.info("[%d/%d] %s: done, skipped", k, len(mine), run.name)
                continue
            log.info("[%d/%d] %s", k, len(mine), run.name)
            execute_run(cfg, run, policy_cfg, dataset, demo_subset(by_task, tasks, run.count, dataset))
    return write_study_report(cfg)
