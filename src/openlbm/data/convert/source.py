"""What every converter reads: a source of episodes in some foreign layout, seen one episode at a time.

A converter for a format (LeRobot v2.1, RLDS/TFDS, robomimic HDF5...) is a :class:`Source`: it lists its episodes
cheaply, declares the LeRobot-v3 features it will produce, and yields one :class:`SourceEpisode` at a time, so a
conversion never holds more than one episode in memory. The shared driver (:mod:`openlbm.data.convert.driver`)
turns any ``Source`` into a v3 dataset: parallel over episodes, resumable after a kill, validated at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from openlbm.types import FeatureSpec


class SourceError(ValueError):
    """Bad or unexpected input in a foreign dataset. The message names the file, record/episode and key."""


@dataclass(frozen=True)
class SourceEpisode:
    """One episode of a foreign dataset, with its features already renamed to v3 keys."""

    index: int
    """Position of the episode in the source's own order (stable across runs: resume keys on it); equals the
    ``index`` passed to :meth:`Source.episode`."""
    task: str
    """Natural-language instruction ("" is not allowed: sources without one use a documented default)."""
    frames: dict[str, np.ndarray]
    """v3 key -> per-frame array, leading dim = episode length ``T``: ``observation.images.<cam>`` uint8
    ``[T, H, W, 3]``, ``observation.state`` float32 ``[T, S]``, ``action`` float32 ``[T, A]``, any other declared
    feature likewise. Every declared feature is present and every array has the same ``T``."""
    origin: str
    """Where it came from, for error messages and provenance (e.g. ``"train.tfrecord-00000-of-00001 record 3"``)."""


@runtime_checkable
class Source(Protocol):
    """A foreign dataset opened for reading.

    With ``--workers N > 1`` the driver forks worker processes that inherit the opened source (it is not pickled)
    and call :meth:`episode` there, so a source must not share an open file handle across processes: open files
    lazily and reopen them when ``os.getpid()`` changes (see ``RobomimicSource._file``). :meth:`features`, ``fps``
    and ``__len__`` must be cheap (no episode decoding); they are called in the main process and in workers.
    """

    root: Path
    """The file or folder it was opened from."""

    @property
    def fps(self) -> float:
        """Frames per second of every episode."""
        ...

    @property
    def robot_type(self) -> str:
        """Free-text robot name written into ``info.json`` ("" when unknown)."""
        ...

    def features(self) -> dict[str, FeatureSpec]:
        """The v3 features every episode will carry (images as ``dtype="video"``, shape ``(H, W, 3)``)."""
        ...

    def __len__(self) -> int:
        """Number of episodes."""
        ...

    def episode(self, index: int) -> SourceEpisode:
        """Read episode ``index`` (0-based, in source order). Raises :class:`SourceError` naming file/episode/key."""
        ...

    def __iter__(self) -> Iterator[SourceEpisode]:
        """Episodes in order (may be faster than repeated :meth:`episode` for sequential formats)."""
        ...
