"""``lbm data convert SRC DST`` and ``lbm data import-videos SRC DST``: thin CLIs over
:func:`openlbm.data.convert.driver.convert`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from openlbm.data.convert.formats import Format

if TYPE_CHECKING:
    from openlbm.data.convert.driver import ConvertOptions


@dataclass(frozen=True)
class _WriteV3:
    """What every command writing a v3 dataset through the convert driver takes: SRC, DST and the output flags."""

    src: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="SRC")]]
    """The source (see the command)."""
    dst: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="DST")]]
    """Output v3 dataset folder (created; an interrupted run into it is resumed)."""
    workers: int = max(1, os.cpu_count() or 1)
    """Processes reading, decoding and encoding source episodes (default: one per core)."""
    max_episodes: int | None = None
    """Write only the first N source episodes."""
    video_codec: str = "h264"
    """Codec of the written videos (h264 or av1)."""
    gop: int = 2
    """Keyframe interval of the written videos."""
    crf: int | None = None
    """Video quality (lower = better; default 18 for h264, 30 for av1)."""
    validate: bool = True
    """Check the result with `lbm data validate`'s checks (exit 1 on problems)."""
    progress: bool = True
    """Print one line per written episode."""

    def options(self) -> ConvertOptions:
        from openlbm.data.convert.driver import ConvertOptions

        return ConvertOptions(workers=self.workers, video_codec=self.video_codec, gop=self.gop, crf=self.crf,
                              max_episodes=self.max_episodes, validate=self.validate)


@dataclass(frozen=True)
class Convert(_WriteV3):
    """Convert a LeRobot v2.1, RLDS/TFDS or robomimic HDF5 dataset to LeRobot v3 (re-run to resume after a kill)."""

    src: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="SRC")]]
    """Source dataset: a folder (LeRobot v2.1, RLDS/TFDS) or a .hdf5 file (robomimic)."""
    format: Format = "auto"
    """Source format; ``auto`` detects it from the files."""
    keymap: Path | None = None
    """RLDS: JSON rename table extending the built-in Open X-Embodiment key map."""
    task: str | None = None
    """robomimic: instruction for every episode (default: LIBERO problem_info, else derived from env_name)."""
    state_keys: str | None = None
    """robomimic: comma-separated low-dim obs keys concatenated into observation.state, in order (default: all, sorted)."""
    filter_key: str | None = None
    """robomimic: convert only the demos in mask/<filter_key> (e.g. train)."""
    fps: float | None = None
    """robomimic: frames per second (default: env_kwargs.control_freq, else 20)."""

    def run(self) -> int:
        from openlbm.data.convert.formats import SourceOptions, open_source

        state_keys = tuple(k.strip() for k in self.state_keys.split(",") if k.strip()) if self.state_keys else None
        src_opts = SourceOptions(keymap=self.keymap, task=self.task, state_keys=state_keys, filter_key=self.filter_key,
                                 fps=self.fps)
        return run_conversion(lambda: open_source(self.src, self.format, src_opts), self.src, self.dst, self.options(),
                              self.progress)


def run_conversion(open_it: Callable[[], tuple[Any, str]], src: Path, dst: Path, opts: ConvertOptions, progress: bool) -> int:
    """Open the source (``open_it() -> (source, format name)``), convert it into ``dst`` and print the outcome:
    exit 0, 1 (validation problems, listed) or 2 (bad input: one ``error:`` line)."""
    from openlbm.data.convert.driver import convert

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def on_episode(done: int, total: int) -> None:
        if progress:
            print(f"episode {done}/{total}", flush=True)

    try:
        source, fmt = open_it()
        report = convert(source, dst, fmt, opts, on_episode=on_episode)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # SourceError / DatasetError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {report.converted} episodes ({report.episodes} episodes, {report.frames} frames in total) "
          f"from {fmt} {src} to {report.root} in {report.seconds:.1f}s")
    if report.problems:
        print(f"{report.root}: validation found {len(report.problems)} problem(s)", file=sys.stderr)
        for p in report.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if opts.validate:
        print(f"{report.root}: OK")
    return 0


@dataclass(frozen=True)
class ImportVideos(_WriteV3):
    """Import a folder of captioned videos as an action-less, state-less v3 dataset (re-run to resume after a kill).

    Captions: ``clip.txt`` beside ``clip.mp4``, or one ``captions.json`` ({"clip.mp4": "caption"}) or
    ``captions.jsonl`` ({"video": "clip.mp4", "caption": "..."} per line) in SRC. One episode per video."""

    src: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="SRC")]]
    """Folder of video files (.mp4, .webm, .mkv, .mov, .avi, .m4v; subfolders too), one caption each."""
    fps: float | None = None
    """Frame rate of the dataset; videos are resampled to it (default: the first video's rate)."""
    size: int | None = None
    """Center-crop every frame to a square and resize it to SIZE x SIZE (even); default: keep the size, which every
    video must then share."""
    camera: str = "camera"
    """Camera name: the videos become feature observation.images.<camera>."""
    embodiment: str = ""
    """robot_type written to the dataset (the embodiment name a mixture gives it; default: the folder name)."""

    def run(self) -> int:
        from openlbm.data.convert.videos import VideoFolderSource

        def open_it() -> tuple[Any, str]:
            return VideoFolderSource(self.src, self.fps, self.size, self.camera, self.embodiment), "videos"

        return run_conversion(open_it, self.src, self.dst, self.options(), self.progress)


COMMANDS: dict[str, type] = {"convert": Convert, "import-videos": ImportVideos}
