"""Which converter reads a path: format detection and the one place each :class:`Source` is constructed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openlbm.data.convert.source import Source, SourceError

Format = Literal["auto", "lerobot-v2.1", "rlds", "robomimic"]
LOOKED_FOR = ("LeRobot v2.1 (meta/info.json with codebase_version v2.x + meta/episodes.jsonl), "
              "RLDS/TFDS (a folder with dataset_info.json + features.json + *.tfrecord* files), "
              "robomimic HDF5 (a .hdf5/.h5 file with a 'data' group of demo_N)")


@dataclass(frozen=True)
class SourceOptions:
    """Format-specific reading options (each is ignored by the formats it does not name)."""

    keymap: Path | None = None
    """RLDS: a JSON rename table extending the built-in OXE key map."""
    task: str | None = None
    """robomimic: instruction for every episode (default: LIBERO's problem_info, else from env_name)."""
    state_keys: tuple[str, ...] | None = None
    """robomimic: low-dim obs keys concatenated into observation.state, in this order (default: all, sorted)."""
    filter_key: str | None = None
    """robomimic: convert only the demos listed in ``mask/<filter_key>`` (e.g. ``train``)."""
    fps: float | None = None
    """robomimic: frames per second (default: env_kwargs.control_freq, else 20)."""


def _is_rlds(path: Path) -> bool:
    return (path.is_dir() and (path / "dataset_info.json").is_file() and (path / "features.json").is_file()
            and any(path.glob("*.tfrecord*")))


def _is_robomimic(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() in (".hdf5", ".h5")):
        return False
    try:
        import h5py
    except ImportError:
        return True  # the right extension: let RobomimicSource say that h5py is missing
    try:
        with h5py.File(path, "r") as f:
            return "data" in f and any(k.startswith("demo_") for k in f["data"])
    except (OSError, ValueError):
        return True  # a damaged HDF5 file: RobomimicSource names the problem


def detect(path: Path) -> str:
    """The format of ``path``; :class:`SourceError` listing what was looked for when none matches."""
    from openlbm.data.convert.lerobot_v21 import is_lerobot_v2

    if not path.exists():
        raise SourceError(f"{path}: does not exist")
    if path.is_dir() and is_lerobot_v2(path):
        return "lerobot-v2.1"
    if _is_rlds(path):
        return "rlds"
    if _is_robomimic(path):
        return "robomimic"
    raise SourceError(f"{path}: unknown dataset format; looked for {LOOKED_FOR} (or pass --format)")


def open_source(path: Path, fmt: Format = "auto", opts: SourceOptions = SourceOptions()) -> tuple[Source, str]:
    """Open ``path`` as format ``fmt`` (detected when ``auto``); returns the source and its format name."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect(path)  # type: ignore[assignment]
    elif not path.exists():
        raise SourceError(f"{path}: does not exist")
    if fmt == "lerobot-v2.1":
        from openlbm.data.convert.lerobot_v21 import LeRobotV21Source

        return LeRobotV21Source(path), fmt
    if fmt == "robomimic":
        from openlbm.data.convert.robomimic import RobomimicSource

        return RobomimicSource(path, task=opts.task, state_keys=opts.state_keys, filter_key=opts.filter_key,
                               fps=opts.fps), fmt
    if fmt == "rlds":
        try:
            from openlbm.data.convert.rlds import RLDSSource
        except ModuleNotFoundError as e:
            if e.name != "openlbm.data.convert.rlds":
                raise
            raise SourceError("this openlbm build has no RLDS reader (openlbm.data.convert.rlds)") from None

        return RLDSSource(path, keymap=opts.keymap), fmt
    raise SourceError(f"unknown --format {fmt!r} (choose auto, lerobot-v2.1, rlds, robomimic)")
