"""``lbm data info|validate|stats|view|convert|import-videos|strip-actions``: thin wrappers over the dataset library."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from openlbm.data.convert.commands import Convert, ImportVideos
from openlbm.data.latent_report import PhaseProxy as LatentPhase


@dataclass(frozen=True)
class Info:
    """Print a dataset's summary: fps, episodes, frames, tasks and features."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    json: bool = False
    """Print machine-readable JSON instead of a table."""

    def run(self) -> int:
        from openlbm.data.dataset import DatasetMeta

        meta = DatasetMeta(self.path)  # missing folder / no meta/info.json / unreadable metadata: one-line error
        summary = {
            "root": str(meta.root), "codebase_version": meta.info.get("codebase_version"), "robot_type": meta.robot_type,
            "fps": meta.fps, "episodes": meta.num_episodes, "frames": meta.num_frames, "tasks": meta.tasks,
            "features": {k: {"dtype": f.dtype, "shape": list(f.shape)} for k, f in meta.features.items()},
            "cameras": meta.camera_keys, "has_action": meta.has_action, "has_state": meta.has_state,
            "latent_dim": meta.latent_dim,
        }
        if self.json:
            print(json.dumps(summary, indent=2))
            return _corrupt_exit(self.path)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{meta.root}  ({summary['codebase_version']}, robot_type={meta.robot_type!r})")
        table.add_column("feature")
        table.add_column("dtype")
        table.add_column("shape")
        for k, f in meta.features.items():
            table.add_row(k, f.dtype, str(tuple(f.shape)))
        console = Console()
        console.print(table)
        console.print(f"fps {meta.fps:g}   episodes {meta.num_episodes}   frames {meta.num_frames}   tasks {len(meta.tasks)}")
        console.print(meta.contents())
        for i, t in enumerate(meta.tasks[:20]):
            console.print(f"  task {i}: {t}")
        if len(meta.tasks) > 20:
            console.print(f"  ... and {len(meta.tasks) - 20} more")
        return _corrupt_exit(self.path)


def _corrupt_exit(path: Path) -> int:
    """``info`` shows what it can read, then refuses (a one-line error) a dataset that does not validate."""
    from openlbm.data.layout import DatasetError
    from openlbm.data.validate import validate_dataset

    problems = validate_dataset(path, decode=False, allow_empty=True, hashes="data")  # videos: `validate`'s job
    if problems:
        raise DatasetError(f"{path} is corrupt: {problems[0]} ({len(problems)} problem(s); `lbm data validate "
                           f"{path}` lists them all)")
    return 0


@dataclass(frozen=True)
class Validate:
    """Check every file's content hash, offset, frame count, video range, timestamp, dtype, value and stat; exit 1
    if anything is wrong."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    decode: bool = True
    """Also decode the first and last frame of every episode of every camera."""
    allow_empty: bool = False
    """Accept a dataset with 0 episodes (by default that is a problem: nothing could be trained on it)."""
    fast: bool = False
    """Skip the content hashes (reading every data and video file) and the decoding: the checks `lbm train` runs
    before its first step, minus the data files' hashes."""
    min_length: int = 1
    """Refuse episodes shorter than this many frames (`lbm train` refuses those shorter than its policy's
    ``n_obs_steps``, one observation window)."""
    write_hashes: bool = False
    """Record the sha256 of the data and video files that have none (a dataset written by another tool) in
    meta/checksums.jsonl, under the dataset's writer lock; only when everything else validates."""

    def run(self) -> int:
        from openlbm.data.validate import unhashed_files, validate_dataset

        problems = validate_dataset(self.path, decode=self.decode and not self.fast, allow_empty=self.allow_empty,
                                    hashes="none" if self.fast else "all", min_length=self.min_length)
        if not problems:
            from openlbm.data.checksums import add_missing
            from openlbm.data.dataset import DatasetMeta

            meta = DatasetMeta(self.path)
            print(f"{self.path}: {meta.contents()}")
            if not meta.has_action:
                print(f"{self.path}: action-less: usable for video objectives (latent actions), ignored by action losses")
            if self.write_hashes:
                print(f"{self.path}: recorded the sha256 of {add_missing(self.path)} file(s)")
            unhashed = unhashed_files(self.path)
            if unhashed:
                print(f"{self.path}: note: {len(unhashed)} data/video file(s) have no recorded sha256 (written by "
                      "another tool?), their content was not verified; `--write-hashes` records them")
            elif self.fast:
                print(f"{self.path}: note: content hashes not checked (--fast)")
            print(f"{self.path}: OK")
            return 0
        print(f"{self.path}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1


@dataclass(frozen=True)
class Stats:
    """Recompute meta/stats.json exactly (quantiles = numpy.quantile of all data) with bounded memory."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    image_frames_per_episode: int = 20
    """Video frames decoded per episode per camera for image stats (20 = what the writer uses)."""

    def run(self) -> int:
        from openlbm.data.layout import STATS_PATH
        from openlbm.data.stats import compute_stats

        if self.image_frames_per_episode < 1:
            print(f"error: --image-frames-per-episode must be >= 1, got {self.image_frames_per_episode}", file=sys.stderr)
            return 2
        try:
            stats = compute_stats(self.path, image_frames_per_episode=self.image_frames_per_episode, write=True)
        except (ValueError, FileNotFoundError) as e:  # DatasetError is a ValueError and names file/episode/field
            print(f"error: {e}", file=sys.stderr)
            return 2
        for key, st in stats.items():
            print(f"{key}: mean {_fmt(st['mean'])} std {_fmt(st['std'])} q01 {_fmt(st['q01'])} q99 {_fmt(st['q99'])}")
        print(f"wrote {self.path / STATS_PATH}")
        return 0


def _fmt(x: list) -> str:
    import numpy as np

    return np.array2string(np.asarray(x, dtype=float).reshape(-1), precision=3, separator=",", max_line_width=200)


@dataclass(frozen=True)
class View:
    """Render an episode: PNG contact sheet (cameras over time, instruction, action/state plots) or MP4."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    episode: int = 0
    """Episode index."""
    out: Path | None = None
    """Output file (.png or .mp4); default ``episode_<N>.png`` in the current folder."""

    def run(self) -> int:
        from openlbm.data.view import render_episode

        out = render_episode(self.path, self.episode, self.out or Path(f"episode_{self.episode:03d}.png"))
        print(f"wrote {out}")
        return 0


@dataclass(frozen=True)
class StripActions:
    """Copy a dataset without its actions (action-less video for latent-action / video objectives); videos are
    hard-linked, not re-encoded."""

    src: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="SRC")]]
    """Source v3 dataset."""
    dst: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="DST")]]
    """New dataset folder (must not exist, or be empty)."""
    keep_state: bool = True
    """Keep observation.state (--no-keep-state drops it too: video with neither actions nor proprioception)."""

    def run(self) -> int:
        from openlbm.data.derive import strip_actions
        from openlbm.data.validate import validate_dataset

        out = strip_actions(self.src, self.dst, keep_state=self.keep_state)
        problems = validate_dataset(out, decode=False)
        if problems:
            print(f"{out}: {len(problems)} problem(s)", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 1
        print(f"wrote {out} (actions removed{'' if self.keep_state else ', state removed'}): OK")
        return 0


@dataclass(frozen=True)
class LatentReport:
    """Do a labelled dataset's latent action codes mean something? Codebook use over all frames, and the normalized
    mutual information between codes and a motion-phase proxy from observation.state, against shuffled codes."""

    path: tyro.conf.Positional[Path]
    """A dataset labelled by ``lbm data label-latent``."""
    phase: LatentPhase = field(default_factory=LatentPhase)
    """Which ``observation.state`` dims make the phase proxy (defaults: Meta-World's hand xyz and gripper)."""
    frame_gap: int | None = None
    """``k`` of the phase proxy's frame pairs; default: the labelling model's (``meta/latent_action.json``)."""
    permutations: int = 20
    """Shuffles of the codes for the chance-level NMI."""
    json: bool = False
    """Print the report as JSON."""

    def run(self) -> int:
        from openlbm.data.latent_report import latent_report

        r = latent_report(self.path, self.phase, self.frame_gap, self.permutations)
        if self.json:
            print(json.dumps(r, indent=2))
            return 0
        print(f"{r['dataset']}: {r['frames']} frames, k = {r['frame_gap']}, {len(r['groups'])} group(s) of "
              f"{r['codebook_size']} codes")
        for g, st in enumerate(r["groups"]):
            print(f"  group {g}: {st['codes_used']}/{r['codebook_size']} codes used, perplexity {st['perplexity']:.2f}")
        j = r["joint"]
        print(f"  joint code: {j['codes_used']}/{j['possible']} used, perplexity {j['perplexity']:.2f}")
        ph = r["phase"]
        if ph is None:
            print("  no observation.state: no motion-phase comparison")
            return 0
        print(f"  NMI(code, motion phase) = {ph['nmi']:.3f} over {ph['phases']} proxy phases; shuffled codes "
              f"{ph['nmi_chance_mean']:.3f} (max {ph['nmi_chance_max']:.3f} of {ph['permutations']})")
        for row in ph["table"]:
            print(f"    {row['phase']:<22} {row['frames']:>7} frames  top code {row['top_code']:>4} "
                  f"({100 * row['top_code_share']:.0f}%)")
        return 0


COMMANDS: dict[str, type] = {"info": Info, "validate": Validate, "stats": Stats, "view": View, "convert": Convert,
                             "import-videos": ImportVideos, "strip-actions": StripActions,
                             "latent-report": LatentReport}
