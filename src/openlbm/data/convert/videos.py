"""A folder of captioned video files as a :class:`~openlbm.data.convert.source.Source` (``lbm data import-videos``).

The common shape of human/web video collections: one caption per clip. Either a sidecar text file per video, or one
mapping file in the folder (which then takes precedence: sidecars are ignored)::

    SRC/clip_a.mp4  SRC/clip_a.txt            caption = the .txt beside the video (same stem, UTF-8)
    SRC/kitchen/clip_b.webm  .../clip_b.txt   subfolders are searched too (hidden files and folders are not)
    SRC/captions.json                         {"clip_a.mp4": "pick up the cup", "kitchen/clip_b.webm": "..."}
    SRC/captions.jsonl                        {"video": "clip_a.mp4", "caption": "pick up the cup"} per line

Keys are paths relative to ``SRC`` with ``/``. Each video becomes one episode of an action-less, state-less v3
dataset: task = caption (whitespace stripped), one camera ``observation.images.<camera>``. Frames are resampled to
``fps`` (output frame ``i`` = the source frame shown at ``i / fps`` s; default: the first video's frame rate, so
videos at that rate keep every frame). ``size`` S center-crops every frame to a square and resizes it to S x S
(swscale area averaging, :meth:`openlbm.data.video.RGBConverter.resize`: torch-free, since the driver forks its
workers and a torch thread pool does not survive a fork); without it every video must have the first video's size. Videos are decoded sequentially with PyAV (:func:`openlbm.data.video.iter_frames`); one episode's
resized frames are held in memory (``frames x S x S x 3`` bytes per worker).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from openlbm.data import layout as L
from openlbm.data.convert.source import SourceEpisode, SourceError
from openlbm.types import FeatureSpec, camera_key

if TYPE_CHECKING:
    from openlbm.data.video import RGBConverter

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
CAPTIONS_JSON = "captions.json"
CAPTIONS_JSONL = "captions.jsonl"


def find_videos(root: Path) -> list[Path]:
    """Video files under ``root`` (recursive, hidden entries skipped), sorted by relative path."""
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _mapping_json(path: Path) -> dict[str, object]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path}: expected an object {{\"video file\": \"caption\", ...}}, got {type(obj).__name__}")
    return obj


def _mapping_jsonl(path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}, line {n}: invalid JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("video"), str) or "caption" not in row:
            raise SourceError(f"{path}, line {n}: expected {{\"video\": \"<file>\", \"caption\": \"<text>\"}}, got {line.strip()[:120]}")
        if row["video"] in out:
            raise SourceError(f"{path}, line {n}: second caption for {row['video']!r}")
        out[row["video"]] = row["caption"]
    return out


def read_captions(root: Path, videos: list[Path]) -> list[str]:
    """The caption of each video (see the module docstring); :class:`SourceError` naming the video without one."""
    rels = [p.relative_to(root).as_posix() for p in videos]
    files = [root / n for n in (CAPTIONS_JSON, CAPTIONS_JSONL) if (root / n).is_file()]
    if len(files) > 1:
        raise SourceError(f"{root}: both {CAPTIONS_JSON} and {CAPTIONS_JSONL}; keep one caption file")
    out = []
    if files:
        mapping = _mapping_json(files[0]) if files[0].name == CAPTIONS_JSON else _mapping_jsonl(files[0])
        unknown = sorted(set(mapping) - set(rels))
        if unknown:
            raise SourceError(f"{files[0]}: captions for {unknown[:5]} but no such video file under {root}")
        for video, rel in zip(videos, rels, strict=True):
            if rel not in mapping:
                raise SourceError(f"{video}: no caption (no key {rel!r} in {files[0]})")
            out.append(_caption(mapping[rel], video, f"{files[0]} key {rel!r}"))
        return out
    for video in videos:
        txt = video.with_suffix(".txt")
        if not txt.is_file():
            raise SourceError(f"{video}: no caption ({txt.name} beside it, or a {CAPTIONS_JSON}/{CAPTIONS_JSONL} in {root})")
        try:
            text = txt.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{txt}: caption is not UTF-8 text ({e})") from None
        out.append(_caption(text, video, str(txt)))
    return out


def _caption(value: object, video: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"{video}: empty or non-text caption ({where}: {value!r})")
    return value.strip()


class VideoFolderSource:
    """A folder of captioned videos opened for import (holds no open files; safe to fork)."""

    def __init__(self, root: Path | str, fps: float | None = None, size: int | None = None, camera: str = "camera",
                 embodiment: str = "") -> None:
        from openlbm.data.video import stream_facts

        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: not a folder (expected a folder of video files with captions)")
        if not camera or any(c in camera for c in "./ "):
            raise SourceError(f"camera name must be a non-empty word without '.', '/' or spaces, got {camera!r}")
        if size is not None and (size < 2 or size % 2):
            raise SourceError(f"size must be an even number >= 2 (yuv420p video), got {size}")
        if fps is not None and not fps > 0:
            raise SourceError(f"fps must be > 0, got {fps}")
        self.videos = find_videos(self.root)
        if not self.videos:
            raise SourceError(f"{self.root}: no video files (looked for {', '.join(VIDEO_EXTENSIONS)}, in subfolders too)")
        self.captions = read_captions(self.root, self.videos)
        try:
            first = stream_facts(self.videos[0])
        except L.DatasetError as e:
            raise SourceError(f"undecodable video: {e}") from None
        rate = fps or first["fps"]
        if not rate:
            raise SourceError(f"{self.videos[0]}: the header gives no frame rate; pass --fps")
        self._fps = float(rate)
        self.size = size
        self.hw = (size, size) if size else (int(first["height"] or 0), int(first["width"] or 0))
        self.key = camera_key(camera)
        self._robot_type = embodiment

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def robot_type(self) -> str:
        return self._robot_type

    def features(self) -> dict[str, FeatureSpec]:
        return {self.key: FeatureSpec("video", (*self.hw, 3), ("height", "width", "channels"))}

    def __len__(self) -> int:
        return len(self.videos)

    def _fit(self, img: np.ndarray, path: Path, resizer: RGBConverter) -> np.ndarray:
        """One decoded frame -> the dataset's ``[H, W, 3]`` (center square crop + resize with ``size``)."""
        if self.size is None:
            if img.shape[:2] != self.hw:
                raise SourceError(f"{path}: frames are {img.shape[0]}x{img.shape[1]} but the first video "
                                  f"{self.videos[0]} is {self.hw[0]}x{self.hw[1]}; pass --size S to bring every "
                                  "video to S x S")
            return img
        h, w = img.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return resizer.resize(img[top : top + side, left : left + side], self.hw)

    def _frames(self, path: Path) -> np.ndarray:
        """uint8 ``[N, H, W, 3]``: output frame ``i`` is the source frame shown at ``i / fps`` s (streamed: only the
        output frames are kept)."""
        from openlbm.data.video import RGBConverter, iter_frames, stream_facts

        resizer = RGBConverter()
        tol = 0.25 / self.fps  # a frame stamped within a quarter output frame of t counts as shown at t
        out: list[np.ndarray] = []
        prev: np.ndarray | None = None
        t0 = last = step = None
        try:
            src_fps = stream_facts(path)["fps"]
            for t, img in iter_frames(path):
                t0 = t if t0 is None else t0
                t -= t0
                if last is not None and t <= last:
                    continue  # a repeated or out-of-order stamp: keep the earlier frame
                while prev is not None and len(out) / self.fps < t - tol:
                    out.append(prev)
                step = t - last if last is not None else None
                prev, last = self._fit(img, path, resizer), t
        except L.DatasetError as e:
            raise SourceError(f"undecodable video: {e}") from None
        if prev is None or last is None:
            raise SourceError(f"{path}: undecodable video (no frame decoded)")
        end = last + (1.0 / src_fps if src_fps else step or 1.0 / self.fps)  # the last frame shows for one period
        while len(out) / self.fps < end - tol:
            out.append(prev)
        return np.stack(out)

    def episode(self, index: int) -> SourceEpisode:
        path = self.videos[index]
        return SourceEpisode(index=index, task=self.captions[index], frames={self.key: self._frames(path)}, origin=str(path))

    def __iter__(self) -> Iterator[SourceEpisode]:
        for i in range(len(self)):
            yield self.episode(i)
