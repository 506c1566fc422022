"""``lbm study data-efficiency``: what pretraining buys on new tasks, measured.

For every demo count ``n`` (per task) and training seed, two runs with the same architecture, batch, demos, step
rule and learning-rate selection (:mod:`openlbm.study.tuning`): *scratch* (random init) and *fine-tuned* from the
pretrained policy. Optionally, a pretraining-scale curve: fine-tune from several pretrained policies at one count.
Every run is evaluated on the same fixed initial states (``openlbm.eval.runner``), so episodes pair up by initial
state across runs. The statistics are :mod:`openlbm.study.analysis`; the declared plan :mod:`openlbm.study.plan`.

Layout of the study folder (``--out``)::

    study.json                        settings, counts, seeds and the analysis plan (:mod:`openlbm.study.plan`)
    data/                             scripted demos (max(counts) + validation demos per task), + data.done
    runs/tune/                        the learning-rate grid points and selections (:mod:`openlbm.study.tuning`)
    runs/<arm>-n<count>-s<seed>/      arm = scratch | pre0 (the main pretrained policy) | pre1, pre2 ... (scale)
        train/                        a normal run dir (lbm train / lbm finetune layout)
        eval/                         a normal eval dir (records, summary)
    bundle/                           what the report is rebuilt from (:mod:`openlbm.study.bundle`)
    results.json, report.html         written by :mod:`openlbm.study.report`

Demo subsets are nested: the ``n``-demo set of a task is its first ``n`` episodes in generation order (the
generator keeps the first successes of a fixed attempt order), selected from the one dataset by episode index; the
last ``val_demos_per_task`` episodes of each task are held out for validation.

Resuming: a grid point with a recorded validation loss is skipped; a run whose eval is complete is skipped; a run
with checkpoints resumes its training; an unfinished eval resumes from its records. Sharding: unit ``j`` (in
:func:`plan_units` order: the grid, then the runs) belongs to shard ``j % n``; shards come from ``--shard i/n`` or
torchrun's ``RANK``/``WORLD_SIZE`` (each rank then trains its runs on its own, not DDP).
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

    pretrained: tuple[Path, ...] = ()
    """Pretrained policies (run dir, checkpoint dir or policy dir). The first is fine-tuned at every count; all
    of them (with scratch as "no pretraining") make the pretraining-scale curve at ``scale_count``. Only
    ``report_only`` may leave it empty: the settings then come from the folder's ``study.json``."""
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
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds: each (count, seed) is one scratch and one fine-tuned run. Training runs are the unit of
    replication: intervals and p-values bootstrap over them (three is the protocol's minimum; one seed gives
    episode-level statistics only, and the report says so)."""
    scale_labels: tuple[str, ...] = ()
    """Labels of the pretrained policies in the scale curve (e.g. ``25% 50% 100%``); default: their dir names."""
    scale_count: int | None = None
    """Demo count of the scale curve (default: the smallest of ``counts``); only used with several ``pretrained``."""
    dataset: Path | None = None
    """Use this ``lbm data generate`` dataset (>= max(counts) demos per task) instead of generating ``out/data``."""
    preset: Literal["debug", "quickstart", "small", "base"] = "quickstart"
    """Training preset of the scratch arm; the fine-tuned arm uses the fine-tuning preset of the same name."""
    steps: int | None = None
    """Optimizer steps of every run, both arms (default: the scratch preset's), unless ``epochs`` is set."""
    epochs: float | None = None
    """The step rule by demo count, the same for both arms: each run trains ``ceil(epochs * frames / batch_size)``
    steps, ``frames`` being its own demos' (more demos, more steps). ``None`` = ``steps`` for every run."""
    lr_grid: tuple[float, ...] | None = None
    """Learning rates tried for both arms (:mod:`openlbm.study.tuning`): each arm, at each count, takes the one with
    the lowest held-out validation loss. ``None`` = the scratch preset's rate and a third of it; one rate = no
    tuning, that rate for both arms."""
    val_demos_per_task: int = 2
    """Demos per task held out for the validation loss (generated after the training demos, never trained on)."""
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
    """Significance level of the paired tests (part of the analysis plan: fixed once the study has started)."""
    delta: float = 0.10
    """Non-inferiority margin of the data multiplier, as a success-rate difference (0.10 = 10 points): fine-tuned@n
    is not worse than scratch@N when the lower bound of the paired difference's interval is above ``-delta``."""
    confidence: float = 0.95
    """Confidence level of every interval of the analysis (two-sided)."""
    primary: Literal["noninferiority", "superiority"] = "noninferiority"
    """The primary endpoint, declared in ``study.json`` before any run: ``noninferiority`` of fine-tuned at
    ``primary_count`` against scratch at the largest count (margin ``delta``), or ``superiority`` of fine-tuned over
    scratch at ``primary_count`` (two-sided paired test at ``alpha``). Everything else the report prints is
    secondary."""
    primary_count: int | None = None
    """Fine-tuned demo count of the primary endpoint (one of ``counts``); ``None`` = the second-largest count for
    ``noninferiority`` (the largest when there is one), the largest for ``superiority``."""
    family: tuple[Path, ...] = ()
    """Other study folders (e.g. the other split) whose per-count tests join this report's Holm family: every count
    of every split reported is corrected together. Read from their bundles."""
    shard: str | None = None
    """``i/n``: run only every n-th run starting at i (default: torchrun's RANK/WORLD_SIZE, else all runs)."""
    report_only: bool = False
    """Only (re)write the report from the runs finished so far."""

    def __post_init__(self) -> None:
        if not self.pretrained and not self.report_only:
            raise ValueError("the study needs at least one pretrained policy (--pretrained PATH)")
        if not self.counts or min(self.counts) < 1 or len(set(self.counts)) != len(self.counts):
            raise ValueError(f"counts must be distinct positive demo counts, got {list(self.counts)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.scale_labels and len(self.scale_labels) != len(self.pretrained):
            raise ValueError(f"scale_labels has {len(self.scale_labels)} labels for {len(self.pretrained)} pretrained")
        if self.eval_episodes_per_task < 1:
            raise ValueError(f"eval_episodes_per_task must be >= 1, got {self.eval_episodes_per_task}")
        if not 0 < self.delta < 1 or not 0.5 <= self.confidence < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"need 0 < delta < 1, 0.5 <= confidence < 1, 0 < alpha < 1; got delta={self.delta}, "
                             f"confidence={self.confidence}, alpha={self.alpha}")
        if self.lr_grid is not None and (not self.lr_grid or min(self.lr_grid) <= 0):
            raise ValueError(f"lr_grid must hold positive learning rates, got {list(self.lr_grid)}")
        if self.val_demos_per_task < 0 or (self.epochs is not None and self.epochs <= 0):
            raise ValueError(f"need val_demos_per_task >= 0 and epochs > 0, got {self.val_demos_per_task}, {self.epochs}")
        if len(self.lr_rates()) > 1 and self.val_demos_per_task == 0:
            raise ValueError("choosing from lr_grid needs validation demos: set val_demos_per_task >= 1")
        if self.primary_count is not None and self.primary_count not in self.counts:
            raise ValueError(f"primary_count {self.primary_count} is not one of counts {list(self.counts)}")

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
                "eval_episodes_per_task", "eval_seed", "demo_seed", "epochs", "val_demos_per_task")
        return {**{k: to_jsonable(getattr(self, k)) for k in keep}, "max_steps": self.episode_steps,
                "lr_grid": list(self.lr_rates())}

    def lr_rates(self) -> tuple[float, ...]:
        """``lr_grid``, or the scratch preset's rate and a third of it."""
        if self.lr_grid is not None:
            return tuple(sorted(self.lr_grid))
        from openlbm.configs.presets import preset

        lr = preset(self.preset).optim.lr
        return (lr / 3, lr)

    def analysis_plan(self) -> dict[str, Any]:
        """The declared analysis (stored in ``study.json`` before the first run; the report reads it from there)."""
        counts = sorted(self.counts)
        if self.primary == "noninferiority":
            cand = self.primary_count or (counts[-2] if len(counts) > 1 else counts[-1])
            ref = counts[-1]
            text = (f"fine-tuned with {cand} demos/task is non-inferior to scratch with {ref}: the lower bound of the "
                    f"{self.confidence:.0%} interval of the paired success difference is above -{self.delta:.3g}")
        else:
            cand = ref = self.primary_count or counts[-1]
            text = (f"fine-tuned with {cand} demos/task succeeds more often than scratch with {ref} (two-sided paired "
                    f"test at alpha {self.alpha:.3g})")
        return {"primary": self.primary, "finetuned_count": cand, "scratch_count": ref, "delta": self.delta,
                "confidence": self.confidence, "alpha": self.alpha, "statement": text,
                "secondary": "every count: fine-tuned vs scratch (Holm across counts, and across the splits given "
                             "as --family); per task (Holm across tasks); the data multiplier and its control; "
                             "the scale curve (uncorrected)"}

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


def plan_units(cfg: StudyConfig) -> list[Any]:
    """Everything to run, in order: the learning-rate grid points first (:mod:`openlbm.study.tuning`), then
    :func:`plan_runs`. A shard takes every n-th unit; seed runs wait for their arm's grid, which every shard runs
    first, so no shard waits on itself."""
    from openlbm.study.tuning import plan_tuning

    runs = plan_runs(cfg)
    arms_counts = list(dict.fromkeys((r.arm, r.count) for r in runs))
    return [*plan_tuning(cfg, arms_counts), *runs]


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


def demo_subset(by_task: dict[str, list[int]], tasks: list[str], count: int, root: Path,
                held_out: int = 0) -> tuple[int, ...]:
    """The first ``count`` episodes of every task (nested in ``count``); errors if a task has fewer, not counting
    its last ``held_out`` (the validation demos)."""
    short = {t: len(by_task.get(t, [])) for t in tasks if len(by_task.get(t, [])) < count + held_out}
    if short:
        raise ValueError(f"{root}: fewer than {count} demos (+ {held_out} held out for validation) for {short} "
                         "(regenerate with more episodes per task)")
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
        out=root, tasks=cfg.tasks, episodes_per_task=cfg.max_count + cfg.val_demos_per_task, cameras=cameras, size=size,
        max_steps=cfg.episode_steps, workers=cfg.workers, seed=cfg.demo_seed, suite=cfg.suite, progress=False,
    ))
    marker.write_text(json.dumps({"root": str(root)}) + "\n")
    return root


def train_config(cfg: StudyConfig, run: Run, policy_cfg: Any, dataset: Path, episodes: tuple[int, ...], lr: float,
                 run_dir: Path | None = None) -> Any:
    """The run's TrainConfig: the same architecture, batch, demos, step rule, warmup and learning-rate selection for
    both arms (:mod:`openlbm.study.tuning`); the fine-tuned arm starts from the pretrained weights."""
    from openlbm.configs.presets import preset
    from openlbm.data.mixture import SourceConfig
    from openlbm.study.tuning import frames_of, steps_for

    base = preset(cfg.preset)
    run_dir = run_dir or cfg.out / "runs" / run.name / "train"
    batch = cfg.batch_size or base.batch_size
    steps = steps_for(cfg, frames_of(dataset, episodes) if cfg.epochs is not None else 0, batch, base.steps)
    return replace(
        base,
        policy=policy_cfg,
        data=replace(base.data, sources=(SourceConfig(root=dataset, episodes=episodes),)),
        run_dir=run_dir,
        steps=steps,
        batch_size=batch,
        optim=replace(base.optim, lr=lr, warmup_steps=min(base.optim.warmup_steps, steps // 10)),
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


def train_run(tc: Any, name: str) -> None:
    """Train (or resume, or skip when already trained) one run."""
    from openlbm.policies.policy_dir import read_latest
    from openlbm.train.checkpoint import step_dir_name
    from openlbm.train.loop import train

    latest = read_latest(tc.run_dir / "checkpoints") if (tc.run_dir / "checkpoints").is_dir() else None
    if latest is None and tc.run_dir.exists():
        # killed before its first checkpoint: nothing to resume, and the trainer refuses a dir holding a run
        log.info("%s: no checkpoint yet, restarting its training", name)
        shutil.rmtree(tc.run_dir)
    if latest is None or latest.name != step_dir_name(tc.steps):
        log.info("%s: training %d steps at lr %.3g on %d episodes%s", name, tc.steps, tc.optim.lr,
                 len(tc.data.sources[0].episodes), " (resuming)" if tc.resume else "")
        train(tc)


def execute_tune(cfg: StudyConfig, unit: Any, policy_cfg: Any, dataset: Path, episodes: tuple[int, ...],
                 val_episodes: tuple[int, ...]) -> None:
    """Train one learning-rate grid point at the first seed and record its validation loss."""
    from openlbm.policies.policy_dir import resolve_policy_dir
    from openlbm.study import tuning as T

    lr = cfg.lr_rates()[unit.index]
    run = Run(unit.arm, unit.count, cfg.seeds[0])
    tc = train_config(cfg, run, policy_cfg, dataset, episodes, lr, T.tune_dir(cfg) / unit.name / "train")
    train_run(tc, unit.name)
    loss = T.validation_loss(resolve_policy_dir(tc.run_dir), dataset, val_episodes, tc.batch_size, cfg.device)
    log.info("%s: validation loss %.5f at lr %.3g", unit.name, loss, lr)
    T.record_point(cfg, unit, loss, lr)


def execute_run(cfg: StudyConfig, run: Run, policy_cfg: Any, dataset: Path, episodes: tuple[int, ...]) -> None:
    """Train (or resume, or skip when trained) and evaluate (or resume) one run at its arm's chosen rate."""
    from openlbm.eval.runner import evaluate
    from openlbm.study import tuning as T
    from openlbm.study.bundle import archive_run

    lr = T.wait_for_lr(cfg, run.arm, run.count)
    tc = train_config(cfg, run, policy_cfg, dataset, episodes, lr)
    if len(cfg.lr_rates()) > 1 and run.seed == cfg.seeds[0] and not tc.run_dir.exists():
        # the chosen grid point is this seed's run, trained with exactly this config: move it, do not retrain
        chosen = T.Tune(run.arm, run.count, cfg.lr_rates().index(lr))
        tc.run_dir.parent.mkdir(parents=True, exist_ok=True)
        (T.tune_dir(cfg) / chosen.name / "train").replace(tc.run_dir)
        (T.tune_dir(cfg) / chosen.name).rmdir()
        tc = replace(tc, resume=True)
    train_run(tc, run.name)
    log.info("%s: evaluating", run.name)
    evaluate(eval_config(cfg, run))
    archive_run(cfg.out, run.name)


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) this process's share of the study, then write the report; returns its path."""
    from openlbm.envs.tasks import resolve_tasks
    from openlbm.study.plan import check_identity, config_from_study
    from openlbm.study.report import write_study_report
    from openlbm.study.tuning import held_out, point_done

    shard = parse_shard(cfg.shard)
    if cfg.report_only and not cfg.pretrained:
        labels = {"scale_labels": cfg.scale_labels} if cfg.scale_labels else {}
        cfg = config_from_study(cfg.out, family=cfg.family, **labels)
    else:
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
        val = held_out(by_task, tasks, cfg.val_demos_per_task, dataset)
        mine = [u for j, u in enumerate(plan_units(cfg)) if j % shard[1] == shard[0]]
        for k, unit in enumerate(mine, 1):
            demos = demo_subset(by_task, tasks, unit.count, dataset, cfg.val_demos_per_task)
            if eval_complete(cfg, unit) if isinstance(unit, Run) else point_done(cfg, unit):
                log.info("[%d/%d] %s: done, skipped", k, len(mine), unit.name)
            elif isinstance(unit, Run):
                log.info("[%d/%d] %s", k, len(mine), unit.name)
                execute_run(cfg, unit, policy_cfg, dataset, demos)
            else:
                log.info("[%d/%d] %s (learning-rate grid)", k, len(mine), unit.name)
                execute_tune(cfg, unit, policy_cfg, dataset, demos, val)
    archive_finished(cfg)
    return write_study_report(cfg)


def archive_finished(cfg: StudyConfig) -> None:
    """Copy every finished run not yet in the bundle there (runs of a folder from before bundles, or of a shard
    killed between its evaluation and its archiving)."""
    from openlbm.study.bundle import archive_run, bundle_dir, write_json_atomic
    from openlbm.study.tuning import selections, tune_dir

    if not (cfg.out / "runs").is_dir():
        return
    for run in plan_runs(cfg):
        if eval_complete(cfg, run):
            archive_run(cfg.out, run.name)
    for sel in selections(tune_dir(cfg)):
        write_json_atomic(bundle_dir(cfg.out) / "tuning" / f"{sel['arm']}-n{sel['count']:03d}.json", sel)
